"""One entry point for every registered merge method, per-tensor or procedure, so callers never ask which."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from anima.errors import ConfigError
from anima.merge.methods import get_method
from anima.merge.streaming import merge


def merge_models(
    method: str,
    ingredient_dirs: Sequence[Path | str],
    out_dir: Path | str,
    *,
    base_dir: Path | str | None = None,
    evaluate: Callable[[Path], float] | None = None,
    check: bool = True,
    **params: Any,
) -> list[Path]:
    """Build the model dir ``out_dir`` with ``method``; returns the ingredient dirs it is made of.

    A per-tensor method streams every ingredient (:func:`anima.merge.streaming.merge`); a procedure such
    as greedy soup keeps some of them, judged by ``evaluate(model_dir) -> score`` (lower is better).
    """
    spec = get_method(method)
    dirs = [Path(d) for d in ingredient_dirs]
    if not spec.procedure:
        merge(method, dirs, out_dir, base_dir=base_dir, check=check, **params)
        return dirs
    resolved = spec.resolve_params(len(dirs), params)
    if base_dir is not None:
        raise ConfigError(f"merge method '{method}' takes no base model, got base {base_dir}")
    if evaluate is None:
        raise ConfigError(f"merge method '{method}' needs an evaluate function (held-out score of a model dir)")
    return [Path(d) for d in spec.fn(dirs, Path(out_dir), evaluate=evaluate, **resolved)]
