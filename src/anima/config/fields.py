"""`setting()`: a dataclass field that carries its own doc and valid range.

The schema is the single source of truth: validation (`anima.config.validate`) and the generated config
reference (docs/CONFIG.md, scripts/gen_config_reference.py) both read this metadata, so a key's documentation
cannot drift from its check.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import MISSING, field
from typing import Any, Sequence


def setting(
    default: Any = MISSING,
    doc: str = "",
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    choices: Sequence[Any] | None = None,
    factory: Any = None,
) -> Any:
    """Declare a config key with a one-line doc and optional bounds (gt/ge/lt/le) or allowed choices."""
    meta = {"doc": doc, "gt": gt, "ge": ge, "lt": lt, "le": le, "choices": tuple(choices) if choices else None}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def dataclass_in(tp: Any) -> type | None:
    """The dataclass a field's type annotation names (itself, or inside `Optional[...]`), else None: how
    validation and the config reference tell a nested group from a leaf key."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None
