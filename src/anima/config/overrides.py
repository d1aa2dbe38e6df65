"""Overrides that Hydra cannot apply itself, applied to the composed config instead ("late" overrides).

Two kinds:
- `key=value` of a plain string key that shares its name with a config group (`anima chat
  model=models:/anima-tiny@champion`): Hydra would read `model=` as a choice in the conf/model/ group.
- A new entry of a `Dict[str, <dataclass>]` node (`+data.sources.mine={kind: jsonl_chat, path: my.jsonl}`,
  `+data.sources.mine.weight=2`): Hydra assigns a plain dict there and OmegaConf refuses it ("dict is not a
  subclass of SourceConfig"). Merged into the composed config instead, the entry is typed by the schema:
  defaults filled in, unknown keys and bad types refused naming the key. Later overrides of that entry
  (`data.sources.mine.weight=3`) follow it.

Removing (`~data.sources.coding`) and re-weighting (`data.sources.emotion.weight=3`) an existing entry are
plain Hydra overrides and stay with Hydra.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from anima.config.fields import dataclass_in
from anima.errors import ConfigError


@dataclass(frozen=True)
class LateOverride:
    """One override applied after composition: `key` gets `value` merged in (dicts merge, the rest set)."""

    key: str
    value: Any
    text: str  # as written on the command line, for error messages
    parent: str | None = None  # the typed dict that gets a new entry (`data.sources`), opened for it alone


def entry_prefix(schema: type, key: str) -> str | None:
    """`data.sources.mine` for `data.sources.mine` or `data.sources.mine.kind`: `key` up to its entry of a
    `Dict[str, <dataclass>]` node; None when `key` does not go through one."""
    parts = key.split(".")
    node: Any = schema
    for i, part in enumerate(parts):
        if node is None or not dataclasses.is_dataclass(node):
            return None
        hint = typing.get_type_hints(node).get(part)
        if hint is None:
            return None
        if typing.get_origin(hint) in (dict, typing.Dict) and i + 1 < len(parts):
            return ".".join(parts[: i + 2]) if dataclass_in(typing.get_args(hint)[1]) else None
        node = dataclass_in(hint)
    return None


def _parse(text: str) -> Any:  # -> hydra Override
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(text)
    except Exception as e:  # a syntax error: name the override
        raise ConfigError(f"{text}: {str(e).strip().splitlines()[0]}") from None


def split_late(schema: type | None, overrides: Sequence[str],
               group_dirs: Iterable[Path]) -> tuple[list[str], list[LateOverride]]:
    """Split `overrides` into those Hydra applies and the late ones (see the module doc), order kept."""
    if schema is None:
        return list(overrides), []
    hints = typing.get_type_hints(schema)
    plain = {f.name for f in dataclasses.fields(schema) if hints[f.name] in (str, typing.Optional[str])}
    groups = [Path(d) for d in group_dirs]
    kept: list[str] = []
    late: list[LateOverride] = []
    added: set[str] = set()  # entries created by a late override: their later overrides follow them
    for text in overrides:
        key, sep, value = text.partition("=")
        if sep and key in plain and any((d / key).is_dir() for d in groups):
            late.append(LateOverride(key, value.strip().strip("'\""), text))
            continue
        bare = key.lstrip("+~")
        prefix = entry_prefix(schema, bare) if sep else None
        if prefix is None or not (key.startswith("+") or prefix in added):
            kept.append(text)
            continue
        override = _parse(text)
        if override.is_sweep_override():
            raise ConfigError(f"{text}: an entry added on the command line cannot be swept; sweep one of its "
                              f"keys, or put the entry in a config file (conf.local/)")
        added.add(prefix)
        late.append(LateOverride(bare, override.value(), text, parent=prefix.rsplit(".", 1)[0]))
    return kept, late


def apply_late(cfg: Any, late: Sequence[LateOverride]) -> None:
    """Merge each late override into the composed `cfg`, checked by its schema; one-line ConfigError."""
    from omegaconf import OmegaConf, open_dict

    for o in late:
        node, rel = cfg, o.key
        if o.parent:
            node, rel = OmegaConf.select(cfg, o.parent), o.key[len(o.parent) + 1:]
        nested: Any = o.value
        for part in reversed(rel.split(".")):
            nested = {part: nested}
        try:
            with open_dict(node):  # the typed dict only: the new entry is still checked by its dataclass
                node.merge_with(OmegaConf.create(nested))
        except Exception as e:  # omegaconf validation: unknown key, wrong type
            raise ConfigError(f"{o.text}: {_reason(e)}") from None


def _reason(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    key = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("full_key:")), None)
    msg = lines[0] if lines else type(e).__name__
    return f"{msg} ({key})" if key and key not in msg else msg


def expand_sweep(overrides: Sequence[str]) -> list[list[str]]:
    """Every job's overrides of a `--multirun` over `overrides`, as Hydra's basic sweeper forms them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
        (jobs,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    except Exception as e:
        raise ConfigError(str(e).strip().splitlines()[0]) from None
    return jobs
