"""The search space: parse `sweep.params`, check it against the trial stage's schema before any trial runs,
and turn a trial's suggestions into Hydra overrides."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from anima.errors import ConfigError

KINDS = ("float", "int", "categorical")
_SPEC_KEYS = {"type", "low", "high", "log", "step", "choices"}
_MISSING = object()


@dataclass(frozen=True)
class Param:
    key: str  # config key (optim.lr) or config group (model)
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple | None = None

    def suggest(self, trial) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), step=self.step, log=self.log)

    def grid(self) -> list:
        """The values sampler=grid walks; only discrete params have them."""
        if self.type == "categorical":
            return list(self.choices)
        if self.step is None and self.type == "float":
            raise ConfigError(f"sweep.params.{self.key}: sampler=grid needs a step for a float range")
        if self.log:
            raise ConfigError(f"sweep.params.{self.key}: sampler=grid cannot walk a log range; list the values "
                              f"as choices")
        step = self.step or 1
        n = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
        vals = [self.low + i * step for i in range(n)]
        return [int(round(v)) for v in vals] if self.type == "int" else [round(v, 12) for v in vals]

    def probes(self) -> list:
        """Values that must compose and pass the schema's bounds: the ends of a range, every choice."""
        if self.type == "categorical":
            return list(self.choices)
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]


def _is_spec(node: Any) -> bool:
    return isinstance(node, Mapping) and "type" in node and set(node) <= _SPEC_KEYS


def _parse_one(key: str, node: Mapping) -> Param:
    where = f"sweep.params.{key}"
    kind = node.get("type")
    if kind not in KINDS:
        raise ConfigError(f"{where}.type={kind!r} is not one of {', '.join(KINDS)}")
    if kind == "categorical":
        choices = node.get("choices")
        if not choices or isinstance(choices, (str, Mapping)):
            raise ConfigError(f"{where}.choices must be a non-empty list for type=categorical")
        extra = [k for k in ("low", "high", "step") if node.get(k) is not None]
        if extra:
            raise ConfigError(f"{where}.{extra[0]} has no meaning for type=categorical (use choices)")
        return Param(key, kind, choices=tuple(choices))
    low, high, step, log = node.get("low"), node.get("high"), node.get("step"), bool(node.get("log", False))
    if node.get("choices") is not None:
        raise ConfigError(f"{where}.choices needs type=categorical (type={kind})")
    for name, v in (("low", low), ("high", high)):
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise ConfigError(f"{where}.{name}={v!r} must be a number for type={kind}")
    if low > high:
        raise ConfigError(f"{where}: low={low} must be <= high={high}")
    if log and low <= 0:
        raise ConfigError(f"{where}.low={low} must be > 0 with log=true")
    if step is not None and (not isinstance(step, (int, float)) or step <= 0):
        raise ConfigError(f"{where}.step={step!r} must be a positive number")
    if log and step is not None:
        raise ConfigError(f"{where}: log=true and step cannot be combined (Optuna samples one or the other)")
    if kind == "int":
        for name, v in (("low", low), ("high", high), ("step", step)):
            if v is not None and float(v) != int(v):
                raise ConfigError(f"{where}.{name}={v} must be a whole number for type=int")
    return Param(key, kind, float(low), float(high), log, None if step is None else float(step))


def parse_space(params: Mapping) -> list[Param]:
    """Flatten nested `params` into dotted keys; a leaf is a mapping with a `type`."""
    out: list[Param] = []

    def walk(node: Mapping, prefix: str) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            if _is_spec(v):
                out.append(_parse_one(key, v))
            elif isinstance(v, Mapping) and v:
                walk(v, key + ".")
            else:
                raise ConfigError(f"sweep.params.{key}: expected {{type: float|int|categorical, ...}}, got {v!r}")

    walk(params, "")
    if not out:
        raise ConfigError("sweep.params is empty: give at least one key to search (see conf/sweep/*.yaml)")
    return out


def format_value(value: Any) -> str:
    """A Python value as a Hydra override value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if text and all(c.isalnum() or c in "_-./:@" for c in text) and not text[0].isdigit():
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def to_overrides(values: Mapping[str, Any]) -> list[str]:
    return [f"{k}={format_value(v)}" for k, v in values.items()]


def _flat_keys(node: Any, prefix: str = "") -> list[str]:
    from omegaconf import DictConfig

    keys: list[str] = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            key = f"{prefix}{k}"
            keys.append(key)
            try:
                child = node._get_node(k)
            except Exception:
                continue
            if isinstance(child, DictConfig):
                keys.extend(_flat_keys(child, key + "."))
    return keys


def group_options(key: str) -> list[str]:
    """The choices of config group `key`: its yaml files in the user config dir and the shipped conf/."""
    from anima.paths import conf_dir, user_conf_dir

    return sorted({f.stem for d in (user_conf_dir(), conf_dir()) for f in (d / key).glob("*.yaml")})


def is_group(key: str) -> bool:
    """`model`, `trainer`, ...: a config group (its choices are yaml files, shipped or the user's)."""
    from anima.paths import conf_dir, user_conf_dir

    return "." not in key and any((d / key).is_dir() for d in (conf_dir(), user_conf_dir()))


def check_space(stage: str, base_overrides: Sequence[str], space: Sequence[Param]) -> None:
    """Fail before the first trial if a key is not in the stage's config, a group option does not exist, or a
    bound is the wrong type or out of the schema's range (e.g. optim.lr low=0)."""
    from omegaconf import OmegaConf

    from anima.config.compose import compose, schema_for
    from anima.config.validate import _walk

    # Neither the base nor a probe is a config that runs (cross-field rules apply to each trial's own): only
    # the keys and their ranges are checked here.
    base = compose(stage, list(base_overrides), validate=False)
    known = _flat_keys(base)
    for p in space:
        if is_group(p.key):
            opts = group_options(p.key)
            bad = [c for c in p.choices or () if str(c) not in opts]
            if p.type != "categorical" or bad:
                raise ConfigError(f"sweep.params.{p.key}: config group {p.key} takes one of {', '.join(opts)}"
                                  + (f"; {bad[0]!r} is not one" if bad else " as type=categorical choices"))
            continue
        if OmegaConf.select(base, p.key, default=_MISSING, throw_on_resolution_failure=False) is _MISSING:
            near = difflib.get_close_matches(p.key, known, n=1, cutoff=0.6)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ConfigError(f"sweep.params.{p.key}: no key {p.key} in the {stage} config{hint}")
    schema = schema_for(stage)
    keyed = [p for p in space if not is_group(p.key)]
    depth = max((len(p.probes()) for p in keyed), default=0)
    for i in range(depth):  # every key at its i-th probe value, together: types + per-key ranges
        probe = {p.key: p.probes()[min(i, len(p.probes()) - 1)] for p in keyed}
        try:
            cfg = compose(stage, [*base_overrides, *to_overrides(probe)], validate=False)
            _walk(schema, OmegaConf.to_container(cfg, resolve=True), "")
        except ConfigError as e:
            raise ConfigError(f"sweep.params: {e}") from None
