"""The shape of `src/anima` as numbers: import cycles, upward imports, long files and functions, config casts.

    python scripts/arch_report.py            # a report
    python scripts/arch_report.py --json     # the same, machine-readable (tests/test_architecture.py uses it)

Every `import anima...` / `from anima... import` counts, at module level or inside a function: a lazy import is
still a dependency a reader has to follow. Layers (lowest first) are in `LAYERS`; a package may import its own
layer and those below it, never one above (docs/ARCHITECTURE.md explains them).
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
#: Packages that must never be imported by a library package (the application layer).
APP = ("anima.cli", "anima.stages", "anima.pipeline", "anima.__main__")
#: Top-level packages, lowest layer first; a package imports its own layer or lower ones (docs/ARCHITECTURE.md).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "paths", "procs", "fingerprint", "atomic"),  # foundation: no anima imports
    ("config", "tracking"),  # schemas and composition; the MLflow contract
    ("model", "tokenizer", "merge", "export"),  # weights, vocabularies, tensor-level tools
    ("data", "generation"),  # datasets; decoding
    ("synth", "chat", "serve"),  # things that talk to a model
    ("train",),  # the Lightning training library
    ("evaluation", "sweep"),  # score models; optimise a training function
    ("stages", "pipeline"),  # application: one stage, many stages
    ("cli", "__main__"),  # argv
)
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 80
CAST = re.compile(r"\b(?:int|float|str|bool)\(\s*cfg\b")


def _code_only(source: str) -> str:
    """The source without docstrings and comments, so a cast quoted in prose is not counted."""
    tree = ast.parse(source)
    lines = source.splitlines()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            for i in range(body[0].lineno - 1, body[0].end_lineno):
                lines[i] = ""
    return "\n".join(line.split("#", 1)[0] for line in lines)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(tree: ast.AST, name: str, is_pkg: bool) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("anima"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("anima"):
                found.add(mod)
                found.update(f"{mod}.{a.name}" for a in node.names)  # `from anima.x import module`
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        deps = _imports(ast.parse(path.read_text()), name, path.name == "__init__.py")
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), ignoring package `__init__`s."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The same graph between top-level packages (`anima.train`, `anima.data`, ...)."""
    pkg = lambda m: ".".join(m.split(".")[:2])  # noqa: E731
    out: dict[str, set[str]] = {}
    for m, deps in graph.items():
        out.setdefault(pkg(m), set()).update(pkg(d) for d in deps if pkg(d) != pkg(m) and pkg(m) != "anima")
    return out


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    is_app = lambda m: any(m == a or m.startswith(a + ".") for a in APP)  # noqa: E731
    return sorted((m, d) for m, deps in graph.items() if not is_app(m) and m != "anima" for d in deps if is_app(d))


def layer_violations(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Package edges that point to a higher layer than their own (or to a package missing from LAYERS)."""
    rank = {f"anima.{p}": i for i, layer in enumerate(LAYERS) for p in layer}
    out = []
    for pkg, deps in package_graph(graph).items():
        if pkg == "anima":
            continue
        for dep in deps:
            if dep != "anima" and rank.get(dep, len(LAYERS)) > rank.get(pkg, -1):
                out.append((pkg, dep))
    return sorted(out)


def long_functions() -> list[tuple[str, int]]:
    out = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    out.append((f"{path.relative_to(SRC)}:{node.name}", n))
    return sorted(out, key=lambda x: -x[1])


def report() -> dict:
    graph = import_graph()
    sizes = {str(p.relative_to(SRC)): len(p.read_text().splitlines()) for p in SRC.rglob("*.py")}
    casts = sum(len(CAST.findall(_code_only(p.read_text()))) for p in SRC.rglob("*.py"))
    return {
        "files": len(sizes),
        "lines": sum(sizes.values()),
        "long_files": sorted(((f, n) for f, n in sizes.items() if n > MAX_FILE_LINES), key=lambda x: -x[1]),
        "long_functions": long_functions(),
        "cycles": cycles(graph),
        "package_cycles": cycles(package_graph(graph)),
        "upward_imports": upward_imports(graph),
        "layer_violations": layer_violations(graph),
        "config_casts": casts,
    }


def main() -> None:
    r = report()
    if "--json" in sys.argv:
        print(json.dumps(r, indent=1))
        return
    print(f"{r['files']} files, {r['lines']} lines; config casts like int(cfg...): {r['config_casts']}")
    sections = [
        (f"files over {MAX_FILE_LINES} lines", "long_files", lambda x: f"{x[1]:5d}  {x[0]}"),
        (f"functions over {MAX_FUNCTION_LINES} lines", "long_functions", lambda x: f"{x[1]:5d}  {x[0]}"),
        ("import cycles", "cycles", " <-> ".join),
        ("package cycles", "package_cycles", " <-> ".join),
        ("upward imports (library -> cli/stages/pipeline)", "upward_imports", " -> ".join),
        ("imports against the layer order (LAYERS)", "layer_violations", " -> ".join),
    ]
    for title, key, show in sections:
        print(f"{title}: {len(r[key])}")
        for item in r[key]:
            print("  " + show(item))

if __name__ == "__main__":
    main()
