"""Model sizes -> transformers `LlamaForCausalLM` (save/load, generate, KV cache and SDPA for free)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from anima.errors import ModelError

ARCH_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "intermediate_size", "vocab_size", "max_position_embeddings", "tie_word_embeddings")


def mlp_width(dim: int, multiple_of: int, hidden_dim: int | None = None) -> int:
    """llama2.c's default MLP width: 2/3 of 4*dim, rounded up to `multiple_of` (768 for dim 288)."""
    if hidden_dim:
        return hidden_dim
    width = int(2 * (4 * dim) / 3)
    return multiple_of * math.ceil(width / multiple_of)


def llama_config(model_cfg: Any, tokenizer: Any | None = None):
    """A `LlamaConfig` from the `model` config group (special token ids from the tokenizer if given)."""
    from transformers import LlamaConfig

    ids = {}
    if tokenizer is not None:
        ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    return LlamaConfig(
        vocab_size=model_cfg.vocab_size,
        hidden_size=model_cfg.dim,
        intermediate_size=mlp_width(model_cfg.dim, model_cfg.multiple_of, model_cfg.hidden_dim),
        num_hidden_layers=model_cfg.n_layers,
        num_attention_heads=model_cfg.n_heads,
        num_key_value_heads=model_cfg.n_kv_heads or model_cfg.n_heads,
        max_position_embeddings=model_cfg.max_seq_len,
        rms_norm_eps=model_cfg.norm_eps,
        rope_theta=model_cfg.rope_theta,
        attention_dropout=model_cfg.dropout,
        tie_word_embeddings=model_cfg.tie_embeddings,
        **ids,
    )


def build_model(model_cfg: Any, tokenizer: Any | None = None):
    """A freshly initialised LlamaForCausalLM (call after seeding for reproducible init)."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(llama_config(model_cfg, tokenizer))
    return model


def count_parameters(model) -> int:
    """Unique parameters (tied embeddings counted once); a 4-bit (bitsandbytes) weight counts as the matrix it
    stands for, not as its packed bytes."""
    return sum(_logical_numel(p) for p in {id(p): p for p in model.parameters()}.values())


def _logical_numel(p) -> int:
    state = getattr(p, "quant_state", None)
    return int(state.shape.numel()) if state is not None and hasattr(state, "shape") else p.numel()


def architecture_diff(expected, actual) -> list[str]:
    """Human-readable differences between two configs' architecture fields: ['hidden_size: 64 != 288']."""
    exp = expected.to_dict() if hasattr(expected, "to_dict") else dict(expected)
    act = actual.to_dict() if hasattr(actual, "to_dict") else dict(actual)
    return [f"{k}: {exp.get(k)} != {act.get(k)}" for k in ARCH_FIELDS if exp.get(k) != act.get(k)]


def load_model_dir(path: str | Path, dtype=None, **load_kwargs: Any):
    """Load a HF causal LM dir (safetensors only; never unpickles). `load_kwargs` go to `from_pretrained`
    (QLoRA: `quantization_config`, `device_map`)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from anima.model.resolve import require_safetensors

    hf_logging.disable_progress_bar()  # transformers' "Loading weights" bar, e.g. at the top of `anima chat`
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} is not a Hugging Face model dir (no config.json)")
    require_safetensors(path)
    try:
        return AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, dtype=dtype, **load_kwargs)
    except Exception as e:  # corrupt/missing weights
        raise ModelError(f"cannot load model from {path}: {str(e).splitlines()[0]}") from None


def read_anima_meta(path: str | Path) -> dict:
    meta = Path(path) / "anima.json"
    return json.loads(meta.read_text()) if meta.is_file() else {}
