"""oneDNN-packed weights for matmuls over a few rows (a prompt, a batch of decoding requests).

MKL's gemm repacks the weight on every call; at a few rows that is most of the cost. oneDNN's linear over a weight
packed once (``torch.ops.mkldnn``, what Inductor uses for frozen weights) reuses the packing on every call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Models up to this many bytes of fp32 layer weights keep a oneDNN-packed copy of them for prefill and batches.
MAX_PACKED_BYTES = 512 * 1024 * 1024


def pack(mats: list[tuple], dtype: torch.dtype) -> list[tuple] | None:
    """The matrices in oneDNN's packed layout, or None where that is not available (not fp32, no oneDNN, a
    model too big for a second copy). Why: MKL's gemm repacks the weight on every call, which at a few rows
    (a prompt, a batch of decoding requests) cost ~3.6x as much (12 rows x 288 -> 1536, 2-core EPYC Zen 5:
    136 us vs 38 us); a packed weight is reused by every call."""
    if dtype != torch.float32 or not torch.backends.mkldnn.is_available():
        return None
    if sum(w.numel() * w.element_size() for layer in mats for w in layer) > MAX_PACKED_BYTES:
        return None
    try:
        reorder = torch.ops.mkldnn._reorder_linear_weight
        return [tuple(reorder(w.contiguous(), 32) for w in layer) for layer in mats]
    except (RuntimeError, AttributeError):  # a torch built without these ops
        return None


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ W^T, W either plain or packed by ``pack``."""
    if w.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
    return F.linear(x, w)


def linear_add(x: torch.Tensor, w: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """residual + x @ W^T in one op."""
    if w.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, w, None, "add")
    return torch.addmm(residual, x, w.t())


def packed_mv(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``torch.mv(W, x)``: through oneDNN when W is packed by ``pack``, as a one-row linear when it is plain."""
    return linear(x.view(1, -1), w).view(-1)


def packed_addmv(x: torch.Tensor, w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``torch.addmv(x, W, v)`` (x + W v): through oneDNN when W is packed by ``pack``, else a one-row addmm."""
    return linear_add(v.view(1, -1), w, x.view(1, -1)).view(-1)
