"""anima lineage <uri> [key=value ...]: the tree version -> run -> config hash and data fingerprints -> parents
(init_from, teacher, merge ingredients and base), recursively. Tracking settings compose like `anima status`
(tracking=server, tracking.uri=..., paths.root=... work as overrides)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Sequence

from anima.errors import AnimaError, ConfigError
from anima.model.resolve import MODELS_URI
from anima.tracking.registry import model_uri

USAGE = "usage: anima lineage <model URI> [--depth N] [tracking overrides: tracking.uri=... | paths.root=...]"
RUNS_URI = re.compile(r"^runs:/(?P<run_id>[0-9a-f]+)/(?P<path>.+)$")


def _split(value: str | None) -> list[str]:
    return [p.strip() for p in str(value or "").split(",") if p.strip()]


def parents_of(tags: dict[str, str]) -> list[tuple[str, str]]:
    """(relation, uri) from a version's (or a run's) tags: merge ingredients + base, or init_from + teacher."""
    out: list[tuple[str, str]] = []
    if tags.get("stage") == "merge" or tags.get("ingredients"):
        out += [("ingredient", u) for u in _split(tags.get("ingredients") or tags.get("parent"))]
        if tags.get("base"):
            out.append(("base", tags["base"]))
    else:
        out += [("init_from", u) for u in _split(tags.get("parent") or tags.get("anima.parent"))]
    teacher = tags.get("teacher") or tags.get("anima.lineage.teacher")
    if teacher and teacher != "None":
        out.append(("teacher", teacher))
    seen, uniq = set(), []
    for rel, u in out:
        if u not in seen and u != "None":
            seen.add(u)
            uniq.append((rel, u))
    return uniq


class LineageBuilder:
    def __init__(self, max_depth: int = 10):
        from mlflow import MlflowClient

        self.client = MlflowClient()
        self.max_depth = max_depth
        self.seen: set[str] = set()

    # --------------------------------------------------------------------------------- nodes
    def add(self, tree, uri: str, relation: str | None = None, depth: int = 0) -> None:
        prefix = f"[cyan]{relation}[/] " if relation else ""
        try:
            if m := MODELS_URI.match(uri):
                self._version(tree, uri, m, prefix, depth)
            elif m := RUNS_URI.match(uri):
                self._run_only(tree, uri, m["run_id"], prefix, depth)
            elif (Path(uri) / "config.json").is_file():
                self._dir(tree, uri, prefix, depth)
            else:
                tree.add(f"{prefix}{uri} [red](not found)[/]")
        except AnimaError:
            raise
        except Exception as e:  # a parent deleted from the store: show it, keep going
            tree.add(f"{prefix}{uri} [red](unavailable: {str(e).splitlines()[0][:120]})[/]")

    def _version(self, tree, uri: str, m: re.Match, prefix: str, depth: int) -> None:
        from mlflow.exceptions import MlflowException

        name = m["name"]
        try:
            if m["alias"] == "latest":
                versions = self.client.search_model_versions(f"name='{name}'")
                mv = self.client.get_model_version(name, str(max(int(v.version) for v in versions)))
            elif m["alias"]:
                mv = self.client.get_model_version_by_alias(name, m["alias"])
            else:
                mv = self.client.get_model_version(name, m["version"])
        except (MlflowException, ValueError):
            if depth == 0:
                raise AnimaError(f"{uri}: no such registered version or alias") from None
            tree.add(f"{prefix}{uri} [red](not in the registry)[/]")
            return
        canonical = model_uri(name, mv.version)
        held = self.client.get_registered_model(name).aliases.items()
        aliases = sorted(a for a, v in held if str(v) == str(mv.version))
        tags = dict(mv.tags or {})
        label = f"{prefix}[bold]{canonical}[/]" + (f" {' '.join('@' + a for a in aliases)}" if aliases else "")
        label += f"  [dim]stage={tags.get('stage', '?')}[/]"
        scores = "  ".join(f"{k}={float(tags[k]):.4g}" for k in ("val_ppl", "persona_ppl") if _num(tags.get(k)))
        if scores:
            label += f"  {scores}"
        if canonical in self.seen:
            tree.add(label + " [dim](shown above)[/]")
            return
        self.seen.add(canonical)
        node = tree.add(label)
        if tags.get("stage") == "merge":
            node.add(f"merge: method={tags.get('method')} weights={tags.get('weights')} "
                     f"params={tags.get('merge_params', '{}')}")
        self._run_details(node, mv.run_id, tags)
        self._parents(node, tags, depth)

    def _run_only(self, tree, uri: str, run_id: str, prefix: str, depth: int) -> None:
        if uri in self.seen:
            tree.add(f"{prefix}{uri} [dim](shown above)[/]")
            return
        self.seen.add(uri)
        node = tree.add(f"{prefix}[bold]{uri}[/]")
        tags = self._run_details(node, run_id, {})
        self._parents(node, tags, depth)

    def _dir(self, tree, uri: str, prefix: str, depth: int) -> None:
        meta_path = Path(uri) / "anima.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        node = tree.add(f"{prefix}[bold]{uri}[/]  [dim]local dir, stage={meta.get('stage', '?')}[/]")
        tags: dict[str, str] = {}
        if meta.get("run_id"):
            tags = self._run_details(node, str(meta["run_id"]), {})
        merge = meta.get("merge") or {}
        if merge:
            node.add(f"merge: method={merge.get('method')} params={merge.get('params')}")
            tags = {"ingredients": ",".join(merge.get("ingredients") or []), "base": merge.get("base") or ""}
        elif meta.get("parent"):
            tags = {"parent": meta["parent"], **{k: v for k, v in tags.items() if k == "anima.lineage.teacher"}}
        self._parents(node, tags, depth)

    def _run_details(self, node, run_id: str | None, version_tags: dict[str, str]) -> dict[str, str]:
        """Run, config hash, git, data fingerprints; returns the run's tags merged under the version's."""
        from mlflow.exceptions import MlflowException

        if not run_id:
            node.add("[dim]no run recorded[/]")
            return version_tags
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            node.add(f"run {run_id} [red](deleted)[/]")
            return version_tags
        rt = run.data.tags
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.info.start_time / 1000))
        r = node.add(f"run [bold]{run_id}[/] {rt.get('anima.stage', '?')} {run.info.status} {started}")
        if rt.get("anima.command"):
            r.add(f"[dim]{rt['anima.command']}[/]")
        ch = version_tags.get("config_hash") or rt.get("anima.config_hash")
        git = rt.get("mlflow.source.git.commit", "unknown")
        dirty = " (dirty)" if rt.get("anima.git_dirty") == "true" else ""
        r.add(f"config {ch or '?'}  git {git[:10]}{dirty}")
        inputs = run.inputs.dataset_inputs if run.inputs else []
        for di in inputs:
            ctx = next((t.value for t in di.tags if t.key == "mlflow.data.context"), "")
            fp = next((t.value for t in di.tags if t.key == "fingerprint"), di.dataset.digest)
            r.add(f"data {di.dataset.name}@{fp}" + (f" ({ctx})" if ctx else ""))
        fp = version_tags.get("data_fingerprint") or rt.get("anima.data_fingerprint")
        if fp and not any(fp.startswith(di.dataset.digest) for di in inputs):
            r.add(f"data fingerprint {fp}")
        return {**rt, **version_tags}

    def _parents(self, node, tags: dict[str, str], depth: int) -> None:
        parents = parents_of(tags)
        if not parents:
            return
        if depth + 1 > self.max_depth:
            node.add(f"[dim]… {len(parents)} parent(s) beyond --depth {self.max_depth}[/]")
            return
        for rel, uri in parents:
            self.add(node, uri, rel, depth + 1)


def _num(v: Any) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def lineage_tree(uri: str, max_depth: int = 10):
    from rich.tree import Tree

    root = Tree(f"lineage of [bold]{uri}[/]")
    LineageBuilder(max_depth).add(root, uri)
    return root


def main(argv: Sequence[str]) -> int:
    from rich.console import Console

    args = list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    depth, uris, overrides = 10, [], []
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("--depth", "-d"):
            if i + 1 >= len(args) or not args[i + 1].isdigit():
                raise ConfigError(f"{a} needs a number; {USAGE}")
            depth, i = int(args[i + 1]), i + 2
            continue
        (overrides if "=" in a and not a.startswith(("models:", "runs:")) else uris).append(a)
        i += 1
    if len(uris) != 1:
        raise ConfigError(f"give exactly one model URI (got {len(uris)}); {USAGE}")
    from anima.config.compose import compose
    from anima.config.stage_schemas import StatusConfig
    from anima.config.typed import typed
    from anima.tracking.store import setup_mlflow

    setup_mlflow(typed(compose("status", overrides), StatusConfig).tracking)
    Console().print(lineage_tree(uris[0], depth))
    return 0
