"""The config reference (docs/CONFIG.md), generated from the schemas: every key, its type, default, range, doc.

The dataclasses are the single source of truth (`anima.config.fields.setting` carries each key's doc and
range), so the reference cannot drift from what validation enforces. Regenerate with
`python scripts/gen_config_reference.py`.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Iterator

from anima.config.catalog import STAGES, stage_for_config
from anima.config.fields import dataclass_in


def load_all_schemas() -> dict[str, type]:
    """Config name -> schema of every stage the catalog lists with one, sorted by name."""
    return dict(sorted((s.config_name, s.schema_class()) for s in STAGES.values() if s.schema))


def type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any"
    if origin is typing.Union:
        return " | ".join(type_name(a) for a in args)
    if origin in (list, typing.List):
        return f"list[{type_name(args[0]) if args else 'any'}]"
    if origin in (dict, typing.Dict):
        return f"dict[{', '.join(type_name(a) for a in args)}]" if args else "dict"
    if dataclasses.is_dataclass(tp):
        return tp.__name__
    return getattr(tp, "__name__", str(tp))


def default_of(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(value):
            return ""
    else:
        return "(required)"
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value in ("", [], {}):
        return f"`{value!r}`" if value != "" else '`""`'
    return f"`{value}`"


def range_of(meta: dict) -> str:
    parts = []
    if meta.get("choices"):
        parts.append(" / ".join(str(c) for c in meta["choices"]))
    for op, sym in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
        if meta.get(op) is not None:
            parts.append(f"{sym} {meta[op]}")
    return ", ".join(parts)


def rows(schema: type, prefix: str = "") -> Iterator[tuple[str, str, str, str, str]]:
    """(key, type, default, range, doc) for every leaf key; nested dataclasses flatten with dotted keys,
    `Dict[str, Dataclass]` entries with `<name>`."""
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        sub = dataclass_in(tp)
        meta = dict(f.metadata)
        if sub is not None:
            if meta.get("doc"):
                yield key, type_name(tp), default_of(f), "", meta["doc"]
            yield from rows(sub, key + ".")
            continue
        if typing.get_origin(tp) in (dict, typing.Dict):
            inner = dataclass_in(typing.get_args(tp)[1]) if typing.get_args(tp) else None
            if inner is not None:
                yield key, type_name(tp), default_of(f), "", meta.get("doc", "")
                yield from rows(inner, f"{key}.<name>.")
                continue
        yield key, type_name(tp), default_of(f), range_of(meta), meta.get("doc", "")


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def group_fields(schema: type) -> tuple[list[tuple[str, type]], list[dataclasses.Field]]:
    """A stage schema's config groups (dataclass-typed fields) and its own scalar keys."""
    hints = typing.get_type_hints(schema)
    groups, own = [], []
    for f in dataclasses.fields(schema):
        sub = dataclass_in(hints[f.name])
        (groups.append((f.name, sub)) if sub is not None else own.append(f))
    return groups, own


def render() -> str:
    schemas = load_all_schemas()
    lines = ["# Config reference", "",
             "Generated from the schemas in `src/anima/config/` by `python scripts/gen_config_reference.py`; "
             "do not edit by hand. Every stage composes `conf/<stage>.yaml` onto its schema, so any key below "
             "can be set on the command line (`anima pretrain optim.lr=3e-4`) or in a preset. A wrong key or "
             "type fails at composition; a value out of range fails before any work starts.", "",
             "Types: `a | null` may be `null`; `list[...]` is written `[a,b]` on the command line. "
             "Range: allowed values (`a / b`) or bounds.", "", "## Stages", ""]
    groups: dict[type, tuple[str, list[str]]] = {}
    for name, schema in schemas.items():
        g, own = group_fields(schema)
        for gname, cls in g:
            groups.setdefault(cls, (gname, []))[1].append(name)
    for name, schema in schemas.items():
        stage = stage_for_config(name)
        title = f"anima {name.replace('_', ' ')}"
        lines += [f"### `{title}`", ""]
        if stage:
            lines += [f"{stage.help[0].upper()}{stage.help[1:]}. Config: `conf/{name}.yaml`, schema "
                      f"`{schema.__name__}`.", ""]
        g, own = group_fields(schema)
        if g:
            lines += ["Groups: " + ", ".join(f"[`{gname}`](#{_anchor(gname, cls)})" for gname, cls in g) + ".", ""]
        lines += ["| key | type | default | range | doc |", "|---|---|---|---|---|"]
        hints = typing.get_type_hints(schema)
        for f in own:
            for row in rows_for_field(f, hints[f.name]):
                lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
        if name == "pipeline":
            lines.append("| `<step>` | dict | `{}` |  | One key per step of `pipeline.stages`: its overrides, "
                         "written as for `anima <stage>` (`sft.optim.lr=2e-5`, `pretrain.model=tiny`). A value "
                         "`${step:<earlier step>.<output>}` is that step's output (model_uri, run_id, dataset, "
                         "fingerprint, model_dir, version, registered_name). |")
        lines.append("")
    lines += ["## Groups", "", "Each group is one dataclass; the same group keeps the same keys in every stage "
              "that uses it (`conf/<group>/*.yaml` are its presets).", ""]
    for cls, (gname, users) in sorted(groups.items(), key=lambda kv: (kv[1][0], kv[0].__name__)):
        lines += [f"### <a id=\"{_anchor(gname, cls)}\"></a>`{gname}` ({cls.__name__})", "",
                  "Used by: " + ", ".join(f"`{u.replace('_', ' ')}`" for u in users) + ".", ""]
        doc = (cls.__doc__ or "").strip()
        if doc and not doc.startswith(cls.__name__ + "("):
            lines += [doc.splitlines()[0], ""]
        lines += ["| key | type | default | range | doc |", "|---|---|---|---|---|"]
        for row in rows(cls, f"{gname}."):
            lines.append("| " + " | ".join(_cell(c) if i else f"`{_cell(c)}`" for i, c in enumerate(row)) + " |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def rows_for_field(f: dataclasses.Field, tp: Any) -> list[tuple[str, str, str, str, str]]:
    meta = dict(f.metadata)
    return [(f"`{f.name}`", type_name(tp), default_of(f), range_of(meta), meta.get("doc", ""))]


def _anchor(gname: str, cls: type) -> str:
    return f"group-{gname}-{cls.__name__}".lower()
