"""Range and cross-field checks that types alone cannot express; run before any stage does work."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from omegaconf import DictConfig, OmegaConf

from anima.config.fields import dataclass_in
from anima.errors import ConfigError


def _bounds_error(key: str, value: Any, meta: dict) -> str | None:
    if value is None:
        return None
    if value in ("True", "False"):  # `key=false` on a str key: Hydra parses a bool, OmegaConf stores "False"
        value = value.lower()
    if meta.get("choices") and value not in meta["choices"]:
        return f"{key}={value!r} is not one of {', '.join(map(str, meta['choices']))}"
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    for op, ok, word in (("gt", lambda v, b: v > b, ">"), ("ge", lambda v, b: v >= b, ">="),
                         ("lt", lambda v, b: v < b, "<"), ("le", lambda v, b: v <= b, "<=")):
        bound = meta.get(op)
        if bound is not None and not ok(value, bound):
            return f"{key}={value!r} must be {word} {bound}"
    return None


def _walk(schema: type, node: Any, prefix: str) -> None:
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        value = node.get(f.name) if isinstance(node, (DictConfig, dict)) else getattr(node, f.name, None)
        origin = typing.get_origin(hints[f.name])
        if origin in (dict, typing.Dict):
            inner = dataclass_in(typing.get_args(hints[f.name])[1])
            if inner is not None:
                for name, item in (value or {}).items():
                    _walk(inner, item, f"{key}.{name}.")
                continue
        sub = dataclass_in(hints[f.name])
        if sub is not None and value is not None:
            _walk(sub, value, key + ".")
            continue
        problem = _bounds_error(key, value, dict(f.metadata))
        if problem:
            raise ConfigError(problem)


def validate(cfg: DictConfig, schema: type) -> None:
    """Check every key's declared range/choices, then cross-field rules. Raises ConfigError naming the key."""
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # interpolation errors name the key already
        raise ConfigError(f"cannot resolve config: {e}".splitlines()[0]) from None
    _walk(schema, resolved, "")
    _cross_checks(resolved)


def _cross_checks(cfg: dict) -> None:
    model = cfg.get("model")
    if not isinstance(model, dict):  # chat/serve/export/eval: `model` is a URI string, not the model group
        model = None
    if model and model.get("arch") == "llama":
        if model["dim"] % model["n_heads"]:
            raise ConfigError(f"model.dim={model['dim']} must be divisible by model.n_heads={model['n_heads']}")
        kv = model.get("n_kv_heads") or model["n_heads"]
        if model["n_heads"] % kv:
            raise ConfigError(f"model.n_heads={model['n_heads']} must be divisible by model.n_kv_heads={kv}")
        if (model["dim"] // model["n_heads"]) % 2:
            raise ConfigError(f"model.dim/model.n_heads={model['dim'] // model['n_heads']} must be even (RoPE)")
    if model and model.get("arch") == "hf" and not model.get("path"):
        raise ConfigError("model=hf needs model.path=/path/to/a/local/hf/model")
    split = (cfg.get("data") or {}).get("split")
    if split and split.get("val", 0) + split.get("test", 0) >= 1:
        raise ConfigError(f"data.split.val + data.split.test = {split['val'] + split['test']} must be < 1")
    trainer = cfg.get("trainer")
    if trainer and trainer.get("max_time"):
        parts = str(trainer["max_time"]).split(":")
        if len(parts) != 4 or not all(p.isdigit() for p in parts):
            raise ConfigError(f"trainer.max_time={trainer['max_time']!r} must look like DD:HH:MM:SS")
    resume = cfg.get("resume")
    if resume not in (None, "none", "auto") and not str(resume).isalnum():
        raise ConfigError(f"resume={resume!r} must be none, auto or an MLflow run id")
