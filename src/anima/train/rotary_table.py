"""Rotary position embeddings looked up from a table while a compiled model trains.

Why: transformers' rotary module computes cos and sin of every position on every forward. Under torch.compile,
inductor recomputes them inside each kernel that applies them (per head and batch row, forward and backward): 6% of
a `tiny` step (144x3) in fp32 on a 2-core AMD EPYC Zen 3, ~1% at 288x6. A table of the same values, computed once by the same module,
turns that into a gather. Only in training mode, where positions stay below `model.max_seq_len`; evaluation and
generation (longer positions, KV caches) call the original module.
"""

from __future__ import annotations

import torch


class RotaryTable(torch.nn.Module):
    """Wraps a default-type rotary module: the same (cos, sin), read from buffers filled by that module."""

    def __init__(self, rotary: torch.nn.Module, positions: int):
        super().__init__()
        self.rotary = rotary
        with torch.no_grad():
            cos, sin = rotary(torch.zeros((), dtype=torch.float32, device=rotary.inv_freq.device),
                              torch.arange(positions, device=rotary.inv_freq.device).unsqueeze(0))
        self.register_buffer("cos", cos[0], persistent=False)  # not in the checkpoint: derived
        self.register_buffer("sin", sin[0], persistent=False)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.training:
            return self.rotary(x, position_ids)
        return self.cos[position_ids].to(x.dtype), self.sin[position_ids].to(x.dtype)


def use_rotary_table(decoder: torch.nn.Module, positions: int) -> bool:
    """Swap `decoder.rotary_emb` for a table of `positions` rows where it is a plain (default-type) rotary
    module; True if swapped. Other RoPE variants (dynamic, YaRN, ...) depend on the sequence and stay as they are."""
    rotary = getattr(decoder, "rotary_emb", None)
    if isinstance(rotary, RotaryTable):
        return True
    if rotary is None or getattr(rotary, "rope_type", None) != "default" or not hasattr(rotary, "inv_freq"):
        return False
    decoder.rotary_emb = RotaryTable(rotary, positions)
    return True
