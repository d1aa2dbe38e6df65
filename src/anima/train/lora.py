"""LoRA adapters (peft) for `model=hf` students; merged into plain weights when the model is saved.

Only the adapter matrices train (the optimizer sees parameters with requires_grad). The saved and registered
model is the merged LlamaForCausalLM (or whatever the base class is): a standard HF dir that every consumer
(chat, serve, export, merge) loads without peft.
"""

from __future__ import annotations

import copy

from anima.config.groups import LoraConfig
from anima.errors import ConfigError


def lora_enabled(lora: LoraConfig) -> bool:
    """`model.lora.r` > 0: train adapters instead of all weights."""
    return lora.r > 0


def apply_lora(model, lora: LoraConfig):
    """Wrap `model` in a peft LoRA model; the result has `merged_for_save()` -> a merged deep copy."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = list(lora.target_modules)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    unknown = [t for t in targets if t not in present]
    if not targets or unknown:
        known = sorted(n for n in present if n and not n.isdigit())
        raise ConfigError(f"model.lora.target_modules={targets}: {', '.join(unknown) or 'empty'} not in the model "
                          f"(modules: {', '.join(known[:20])})")
    config = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                            task_type="CAUSAL_LM", bias="none")
    peft_model = get_peft_model(model, config)

    def merged_for_save():
        """A deep copy with the adapters folded into the base weights (training can continue on the original)."""
        return copy.deepcopy(peft_model).merge_and_unload()

    object.__setattr__(peft_model, "merged_for_save", merged_for_save)
    return peft_model


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
