"""`device.attention=sdpa_blocks`: SDPA's causal flash kernel forward, a block-causal backward in plain tensor ops.

Why: in fp32 on a CPU the matmuls of a `tiny` step already run near the matmul peak, and attention is the largest
remainder. SDPA's CPU flash backward was ~14 ms of a layer's ~20 ms here (288x6, 8x256 tokens, 2-core AMD EPYC
Zen 3). The same gradients written as tensor ops, one block of query rows at a time against only the keys it can
see (the masked upper triangle is skipped block-wise), let torch.compile fuse the softmax-backward arithmetic
around a few batched matmuls: ~18 ms a layer for forward and backward instead of ~20. Uncompiled, those ops are
slower than SDPA's kernel, so `auto` picks this only for compiled training.

The forward is SDPA's own kernel, which returns the row log-sum-exp the backward needs, so the output is bit-for-bit
SDPA's. Anything the block backward does not cover (an explicit mask such as packed rows', dropout, grouped-query
heads, a KV cache, a GPU) goes to transformers' SDPA attention unchanged.
"""

from __future__ import annotations

import torch

NAME = "sdpa_blocks"
BLOCK_ROWS = 64  # query rows per backward block: 4 blocks of 8x6x64 rows at 256 tokens measured fastest (vs 2 or 8)


class _CausalFlashAttention(torch.autograd.Function):
    """softmax(q k^T * scale + causal mask) v for q, k, v of shape (batch, heads, tokens, head_dim)."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True, scale=scale)[:2]
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        scale, tokens = ctx.scale, q.shape[2]
        delta = (grad_out * out).sum(-1, keepdim=True)  # rowsum(dO * O) = rowsum(P * dP)
        dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for start in range(0, tokens, BLOCK_ROWS):
            end = min(start + BLOCK_ROWS, tokens)  # these query rows see keys [0, end)
            rows, q_b, do_b = slice(start, end), q[:, :, start:end], grad_out[:, :, start:end]
            k_b, v_b = k[:, :, :end], v[:, :, :end]
            future = torch.ones(end - start, end, dtype=torch.bool, device=q.device).triu(1 + start)
            p = torch.exp((q_b @ k_b.transpose(-1, -2)) * scale - lse[:, :, rows].unsqueeze(-1)).masked_fill(future, 0.0)
            dv[:, :, :end] += p.transpose(-1, -2) @ do_b
            ds = p * ((do_b @ v_b.transpose(-1, -2)) - delta[:, :, rows]) * scale
            dq[:, :, rows] = ds @ k_b
            dk[:, :, :end] += ds.transpose(-1, -2) @ q_b
        return dq, dk, dv, None


def sdpa_blocks_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                          **kwargs):
    """transformers' attention-function interface: (output as (batch, tokens, heads, head_dim), no weights)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    covered = (attention_mask is None and query.device.type == "cpu" and query.shape[2] == key.shape[2]
               and query.shape[1] == key.shape[1] and not (dropout and module.training)
               and query.dtype == torch.float32 and kwargs.get("is_causal", getattr(module, "is_causal", True))
               and kwargs.get("position_bias") is None and kwargs.get("softcap") is None)
    if not covered:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = _CausalFlashAttention.apply(query, key, value, scale)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make `attn_implementation="sdpa_blocks"` known to transformers (masks built as for SDPA: none when causal)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, sdpa_blocks_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
