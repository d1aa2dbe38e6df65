"""QLoRA for `model=hf` (`model.quant.bits=4`): the base loaded in 4 bits, LoRA adapters trained on top.

The base goes through transformers' `BitsAndBytesConfig` (NF4, double quantization, bf16 compute by default)
onto the GPU, peft's `prepare_model_for_kbit_training` freezes it (norms and embeddings upcast to fp32, optional
gradient checkpointing), then the same LoRA as `anima.train.lora` wraps it. Only the adapters train.

The saved model cannot be the 4-bit model with its adapters folded in: every consumer (chat, serve, GGUF
export, merge) wants plain full-precision weights. So the one extra step is this: `merged_for_save` reloads
the base from its directory in full precision (`model.quant.merge_dtype`) on the CPU, puts the trained adapter
weights on it and merges them. The saved model is therefore `base + B·A·alpha/r` exactly as QLoRA defines it;
its logits differ from the training-time 4-bit model's only by the base's quantization error.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from anima.config.groups import ModelConfig, QuantConfig


def compute_dtype(quant: QuantConfig):
    """The torch dtype 4-bit weights are dequantized to: `quant.compute_dtype`, with bfloat16 falling back to
    float16 on a CUDA GPU that lacks bf16 (T4, V100)."""
    import torch

    name = quant.compute_dtype
    if name == "bfloat16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        name = "float16"
    return getattr(torch, name)


def bnb_config(quant: QuantConfig):
    """transformers' `BitsAndBytesConfig` for `model.quant`."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant.quant_type,
                              bnb_4bit_use_double_quant=quant.double_quant,
                              bnb_4bit_compute_dtype=compute_dtype(quant))


def load_quantized(path: str | Path, quant: QuantConfig):
    """The HF model at `path` with its linear layers in 4 bits, placed on this rank's CUDA device (bitsandbytes
    quantizes as the weights arrive there; Lightning's later move to the same device is a no-op). LOCAL_RANK:
    under data parallelism each rank's base lands on its own GPU before Lightning picks the device."""
    import os

    import torch

    from anima.model.build import load_model_dir

    device_map = {"": int(os.environ.get("LOCAL_RANK") or 0)} if torch.cuda.is_available() else None
    return load_model_dir(path, dtype=compute_dtype(quant), quantization_config=bnb_config(quant),
                          device_map=device_map)


def apply_qlora(model, model_cfg: ModelConfig, base_path: str | Path):
    """Freeze the 4-bit `model` for k-bit training and add LoRA adapters; the result's `merged_for_save()`
    merges them into a full-precision reload of `base_path` (see the module doc)."""
    from peft import prepare_model_for_kbit_training

    from anima.train.lora import apply_lora

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=model_cfg.gradient_checkpointing,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_model = apply_lora(model, model_cfg.lora)
    merge_dtype, path = model_cfg.quant.merge_dtype, Path(base_path)

    def merged_for_save():
        return merge_into_full_precision(peft_model, path, merge_dtype)

    object.__setattr__(peft_model, "merged_for_save", merged_for_save)
    return peft_model


def adapter_state(peft_model) -> dict[str, Any]:
    """The trained adapter weights only (peft's keys), as fp32 CPU tensors."""
    import torch
    from peft import get_peft_model_state_dict

    return {k: v.detach().to("cpu", torch.float32) for k, v in get_peft_model_state_dict(peft_model).items()}


def merge_into_full_precision(peft_model, base_path: str | Path, dtype: str = "float32"):
    """A plain HF model: the base at `base_path` reloaded in `dtype` on the CPU with `peft_model`'s adapters
    merged into its weights. The training model (4-bit or not) is left as it is."""
    import torch
    from peft import get_peft_model, set_peft_model_state_dict

    from anima.model.build import load_model_dir

    base = load_model_dir(base_path, dtype=getattr(torch, dtype))
    config = copy.deepcopy(peft_model.peft_config[peft_model.active_adapter])
    config.lora_dropout = 0.0
    fresh = get_peft_model(base, config)
    result = set_peft_model_state_dict(fresh, {k: v.to(getattr(torch, dtype)) for k, v in
                                               adapter_state(peft_model).items()})
    if result.unexpected_keys:
        raise RuntimeError(f"adapter keys not in the reloaded base: {result.unexpected_keys[:3]}")
    return fresh.merge_and_unload().eval()
