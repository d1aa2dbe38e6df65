"""Fused, chunked LM-head + cross-entropy: the loss from the final hidden states without materialising logits.

Why: for a small model the LM head dominates the step's memory traffic. The plain path writes [tokens, vocab]
logits (fp32 for an exact softmax), keeps them for backward, then runs log-softmax backward and nll backward
over the same array (a third of the step on a CPU for the `tiny` model). Here each chunk of tokens gets its
logits, loss and gradients in one pass (the gradient of cross-entropy is `softmax - onehot`), so the logits
never outlive a chunk. The matmuls run in the autocast dtype (bf16 on CPUs with bf16 matrix units); the
softmax, log-sum-exp and gradient accumulation run in fp32, so the loss is as exact as the fp32 path's.
"""

from __future__ import annotations

import functools

import torch

from anima.errors import DataError
from anima.train.labels import IGNORE_INDEX, NO_TARGETS


def _matmul_dtype(t: torch.Tensor) -> torch.dtype:
    device = t.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else t.dtype


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Sum over valid positions of CE(hidden @ weight.T, labels); gradients computed in forward."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int) -> torch.Tensor:
        dtype = _matmul_dtype(hidden)
        h, w = hidden.detach().to(dtype), weight.detach().to(dtype)
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, h.shape[0], chunk):
            hc, y = h[start:start + chunk], labels[start:start + chunk]
            valid = (y != IGNORE_INDEX).unsqueeze(1)
            target = y.clamp_min(0).unsqueeze(1)
            logits = (hc @ w.t()).float()
            lse = torch.logsumexp(logits, dim=1, keepdim=True)
            total += ((lse - logits.gather(1, target)) * valid).sum()
            if torch.compiler.is_compiling():  # softmax - onehot as one pointwise expression: one fused loop
                onehot = torch.arange(logits.shape[1], device=logits.device) == target
                grad = torch.where(valid, (logits - lse).exp() - onehot.to(logits.dtype), 0.0)
            else:  # eager: in place of the logits, no more [chunk, vocab] temporaries
                grad = logits.sub_(lse).exp_()
                grad.scatter_add_(1, target, torch.full_like(lse, -1.0)).mul_(valid)
            grad = grad.to(dtype)
            grad_h[start:start + chunk] = grad @ w
            grad_w += (grad.t() @ hc).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return (grad_h * grad_out).to(ctx.dtypes[0]), (grad_w * grad_out).to(ctx.dtypes[1]), None, None


@functools.cache
def _compiled_sum() -> object:
    """The chunked loss under torch.compile: inductor fuses each chunk's log-sum-exp, softmax and gradient
    into a few loops (tiny, 8x256 tokens, 2-core Xeon: 32 -> 17 ms a step for forward and backward). Traced, the
    gradient is a `where` rather than an in-place scatter, which inductor would run as extra passes over the chunk
    (288x6 in fp32 on a 2-core EPYC Zen 3: ~2% of the step).

    AOTAutograd's on-disk cache skips graphs that call a custom autograd.Function unless told otherwise, so every
    run re-traced and re-partitioned this one (~1.4 s of a warm start on a 2-core EPYC Zen 4). Allowing it is
    safe here: the cache key covers the Function's traced forward and backward (a changed backward misses)."""
    import torch._functorch.config

    torch._functorch.config.autograd_cache_allow_custom_autograd_functions = True
    return torch.compile(_ChunkedLinearCrossEntropy.apply)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         chunk: int = 1024, compiled: bool = False) -> torch.Tensor:
    """Mean next-token cross-entropy of `hidden @ weight.T` over labels != IGNORE_INDEX (labels already
    shifted), equal to `token_cross_entropy(lm_head(hidden), labels)` up to float rounding. `compiled`: run
    it through torch.compile (where the training step is compiled too)."""
    flat = labels.reshape(-1)
    n = int((flat != IGNORE_INDEX).sum())
    if n == 0:
        raise DataError(NO_TARGETS)
    total_of = _compiled_sum() if compiled else _ChunkedLinearCrossEntropy.apply
    total = total_of(hidden.reshape(-1, hidden.shape[-1]), weight, flat, chunk)  # type: ignore[operator]
    return total / n
