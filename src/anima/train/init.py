"""The model a run starts from: fresh weights for the configured size, or `init_from` any model URI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anima.errors import ModelError


def check_compatible(model_cfg: Any, tokenizer, loaded_config, source: str) -> None:
    """init_from must match the `model` config's architecture and the run's tokenizer, field by field."""
    from anima.model.build import architecture_diff, llama_config

    if str(model_cfg.arch) == "llama":
        diff = architecture_diff(llama_config(model_cfg, tokenizer), loaded_config)
        if diff:
            raise ModelError(f"init_from={source} differs from model={model_cfg.name}: {'; '.join(diff)} "
                             f"(pick the matching model= preset)")
    if tokenizer is not None and len(tokenizer) > loaded_config.vocab_size:
        raise ModelError(f"init_from={source}: tokenizer has {len(tokenizer)} tokens but the model's vocab_size "
                         f"is {loaded_config.vocab_size}")


def initial_model(cfg: Any, tokenizer) -> tuple[Any, str | None]:
    """(model, parent canonical URI or None)."""
    from anima.model.build import build_model, load_model_dir

    if not cfg.get("init_from"):
        if str(cfg.model.arch) == "hf":
            return load_model_dir(Path(str(cfg.model.path))), str(cfg.model.path)
        return build_model(cfg.model, tokenizer), None
    from anima.model.resolve import resolve_model

    resolved = resolve_model(str(cfg.init_from), cfg.tracking)
    model = load_model_dir(resolved.path)
    check_compatible(cfg.model, tokenizer, model.config, str(cfg.init_from))
    return model, resolved.canonical_uri
