"""The model a run starts from: fresh weights for the configured size, or `init_from` any model URI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anima.config.groups import ModelConfig
from anima.config.stage_schemas import TrainConfig
from anima.errors import ModelError


def check_compatible(model_cfg: ModelConfig, tokenizer, loaded_config, source: str,
                     model_dir: Path | None = None) -> None:
    """init_from must match the `model` config's architecture and the run's tokenizer, field by field.

    Only the weights' shape and vocabulary are checked: batch size, lr, steps, schedule and every other
    training setting are free to differ from the parent run.
    """
    from anima.model.build import architecture_diff, llama_config

    if model_cfg.arch == "llama":
        diff = architecture_diff(llama_config(model_cfg, tokenizer), loaded_config)
        if diff:
            raise ModelError(f"init_from={source} differs from model={model_cfg.name}: {'; '.join(diff)} "
                             f"(pick the matching model= preset)")
    if tokenizer is not None and len(tokenizer) > loaded_config.vocab_size:
        raise ModelError(f"init_from={source}: tokenizer has {len(tokenizer)} tokens but the model's vocab_size "
                         f"is {loaded_config.vocab_size}")
    if tokenizer is not None and model_dir is not None and (Path(model_dir) / "tokenizer.json").is_file():
        from anima.train.teacher import vocab_diff

        diff = vocab_diff(model_dir, tokenizer)
        if diff:
            raise ModelError(f"init_from={source}: the run's tokenizer is not the model's: {diff} "
                             f"(drop tokenizer.path to use the model's own tokenizer)")


def initial_model(spec: TrainConfig, tokenizer) -> tuple[Any, str | None]:
    """(model, parent canonical URI or None). model=hf with model.lora.r > 0 gets LoRA adapters, on a 4-bit
    base when model.quant.bits=4 (QLoRA)."""
    from anima.model.build import build_model
    from anima.train.lora import lora_enabled

    model_cfg = spec.model
    if lora_enabled(model_cfg.lora) and model_cfg.arch != "hf":
        raise ModelError(f"model.lora.r={model_cfg.lora.r} needs model=hf (LoRA is for Hugging Face students); "
                         f"model={model_cfg.name} trains all weights")
    if not spec.init_from:
        if model_cfg.arch == "hf":
            path = Path(model_cfg.path)  # set: validation refuses model=hf without model.path
            return adapted_model(model_cfg, tokenizer, path, str(path)), str(path.resolve())
        return checkpointed(build_model(model_cfg, tokenizer), model_cfg), None
    from anima.model.resolve import resolve_model

    resolved = resolve_model(spec.init_from, spec.tracking)
    return adapted_model(model_cfg, tokenizer, resolved.path, spec.init_from), resolved.canonical_uri


def adapted_model(model_cfg: ModelConfig, tokenizer, path: Path, source: str):
    """The model dir at `path` in training mode (from_pretrained returns eval mode: dropout off), checked
    against the config and the tokenizer, with LoRA (QLoRA: on its 4-bit load) and gradient checkpointing as
    configured."""
    from anima.model.build import load_model_dir
    from anima.train.lora import apply_lora, lora_enabled

    if model_cfg.quant.bits:
        from anima.train.qlora import apply_qlora, load_quantized

        model = load_quantized(path, model_cfg.quant).train()
        check_compatible(model_cfg, tokenizer, model.config, source, path)
        return apply_qlora(model, model_cfg, path)  # gradient checkpointing goes through peft's preparation
    model = load_model_dir(path).train()
    check_compatible(model_cfg, tokenizer, model.config, source, path)
    model = checkpointed(model, model_cfg)
    return apply_lora(model, model_cfg.lora) if lora_enabled(model_cfg.lora) else model


def checkpointed(model, model_cfg: ModelConfig):
    """`model` with gradient checkpointing on when `model.gradient_checkpointing` asks for it (non-reentrant:
    works with a frozen base whose inputs need no grad)."""
    if model_cfg.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x: the old name is deprecated
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model
