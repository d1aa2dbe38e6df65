"""The graphs the compiled decode steps are exported from, and what they are specialized on.

``DecodeStep`` (one token) and ``DecodeBatchStep`` (``BATCH_ROWS`` sequences at their own positions) are pure
functions of (tokens, positions, the KV cache so far, the weights) -> (logits, the new K and V), written for
``torch.export`` (no in-place cache writes) with the same arithmetic as ``FastLlamaBackend``'s eager steps (the
tests compare logits). ``StepSpec`` is everything the compiled code depends on; compiled.py builds and loads
the packages.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from anima.generation.backends import FastLlamaBackend

MIN_CACHE_LEN = 2  # shorter caches take the eager step (export specializes lengths 0 and 1)
BATCH_ROWS = 8  # rows of the compiled batched step
#: Bumped when the exported graph or its build settings change, so packages built the old way are not reused.
GRAPH_VERSION = 2


@dataclass(frozen=True)
class StepSpec:
    """Everything the compiled code depends on: the shapes, and the thread count Inductor parallelizes
    its loops for (a package built for 1 thread has no OpenMP regions at all)."""

    n_layers: int
    hidden: int
    n_heads: int
    n_kv: int
    head_dim: int
    inter: int
    vocab: int
    max_positions: int
    dtype: str = "float32"
    threads: int = 1

    @classmethod
    def of(cls, backend: FastLlamaBackend) -> "StepSpec":
        return cls(n_layers=len(backend.step_layers), hidden=backend.hidden, n_heads=backend.n_heads,
                   n_kv=backend.n_kv, head_dim=backend.head_dim, inter=backend.inter,
                   vocab=int(backend.embed.shape[0]), max_positions=backend.max_positions,
                   dtype=str(backend.dtype).removeprefix("torch."), threads=torch.get_num_threads())

    def key(self) -> str:
        """Architecture + torch + CPU: a package built for one never loads on another."""
        ident = {**asdict(self), "graph": GRAPH_VERSION, "torch": torch.__version__, "machine": platform.machine(),
                 "cpu": cpu_flags()}
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
        return f"llama-{self.n_layers}x{self.hidden}-v{self.vocab}-p{self.max_positions}-t{self.threads}-{digest}"


def cpu_flags() -> str:
    """The CPU's instruction-set flags (Inductor compiles for the ISA it finds)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return hashlib.sha256(line.split(":", 1)[1].strip().encode()).hexdigest()[:12]
    except OSError:
        pass
    return platform.processor() or "unknown"


class DecodeStep(torch.nn.Module):
    """One token through every layer; the same arithmetic as ``FastLlamaBackend._step`` (the tests compare
    logits), written without in-place cache writes so it exports as a pure graph.

    ``k_old``/``v_old`` are the cache views up to the current position, (L, Hkv, D, T) and (L, Hkv, T, D);
    the new token attends to them and to itself."""

    def __init__(self, spec: StepSpec):
        super().__init__()
        self.spec = spec

    def forward(self, tok, pos, k_old, v_old, embed, cos_t, sin_t, eps_h, head, weights: list[torch.Tensor]):
        s = self.spec
        nq, nkv, hd, inter = s.n_heads, s.n_kv, s.head_dim, s.inter
        qk_dim, half, group = (nq + nkv) * hd, hd // 2, nq // nkv
        x = torch.index_select(embed, 0, tok).view(-1)
        cos, sin = torch.index_select(cos_t, 0, pos), torch.index_select(sin_t, 0, pos)
        ks, vs = [], []
        for li in range(s.n_layers):
            wqkv, wo, wgu, wd = weights[4 * li : 4 * li + 4]
            qkv = torch.mv(wqkv, x) * torch.rsqrt(torch.dot(x, x) + eps_h)  # RMSNorm gain folded into W
            qk = qkv[:qk_dim].view(nq + nkv, hd)
            qk = qk * cos + torch.cat([-qk[:, half:], qk[:, :half]], -1) * sin
            q, k, v = qk[:nq].view(nkv, group, hd), qk[nq:], qkv[qk_dim:].view(nkv, hd)
            scores = torch.cat([torch.bmm(q, k_old[li]), (q * k.unsqueeze(1)).sum(-1, keepdim=True)], -1)
            p = torch.softmax(scores, -1)
            attn = torch.bmm(p[..., :-1], v_old[li]) + p[..., -1:] * v.unsqueeze(1)
            x = x + torch.mv(wo, attn.reshape(nq * hd))
            gu = torch.mv(wgu, x) * torch.rsqrt(torch.dot(x, x) + eps_h)
            x = x + torch.mv(wd, F.silu(gu[:inter]) * gu[inter:])
            ks.append(k)
            vs.append(v)
        return torch.mv(head, x) * torch.rsqrt(torch.dot(x, x) + eps_h), torch.stack(ks), torch.stack(vs)


def _linear_rows(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, w)`` for a few rows x (B, K), as one matrix-vector product per row, which Inductor generates
    as its own loops."""
    return torch.stack([torch.mv(w, x[i]) for i in range(x.shape[0])])


#: How the batched step multiplies its rows by a weight; which is faster depends on the CPU and its BLAS, so the
#: build times both and keeps the faster (aoti.build_batch_package). Tiny, 8 rows, whole step: on a 2-core
#: EPYC Zen 5 "rows" 2.0 ms, "gemm" 2.7 (MKL packs the weight on every call); on a 2-core Xeon (AMX) "rows" 2.0,
#: "gemm" 1.75.
BATCH_MATMULS = {"rows": _linear_rows, "gemm": F.linear}


class DecodeBatchStep(torch.nn.Module):
    """One token for each of ``BATCH_ROWS`` sequences, each at its own position: the continuous-batching step
    (batch.py). The row count is fixed (a smaller batch is padded to it, a larger one runs in chunks): with it
    static Inductor unrolls the per-row products (``_linear_rows``, ``matmul="rows"``); with
    a dynamic one its loops ran 20x slower. ``matmul="gemm"`` multiplies all rows at once through BLAS instead.

    ``k_old``/``v_old`` are the first B cache slots up to T = the longest row's position, (B, L, Hkv, D, T) and
    (B, L, Hkv, T, D); a row at position p attends to its first p entries (the rest are another row's length
    of stale cache, masked out) and to itself. Returns (B, vocab) logits and each row's new K and V,
    (B, L, Hkv, D). The same arithmetic as ``FastLlamaBackend._step_batch`` (the tests compare logits)."""

    def __init__(self, spec: StepSpec, matmul: str = "rows"):
        super().__init__()
        self.spec = spec
        self.matmul = matmul

    def forward(self, toks, pos, k_old, v_old, embed, cos_t, sin_t, eps_h, head, weights: list[torch.Tensor]):
        s, linear = self.spec, BATCH_MATMULS[self.matmul]
        nq, nkv, hd, inter = s.n_heads, s.n_kv, s.head_dim, s.inter
        qk_dim, half, group = (nq + nkv) * hd, hd // 2, nq // nkv
        b, t = toks.shape[0], k_old.shape[-1]
        x = torch.index_select(embed, 0, toks)  # (B, H)
        cos = torch.index_select(cos_t, 0, pos).unsqueeze(1)  # (B, 1, D)
        sin = torch.index_select(sin_t, 0, pos).unsqueeze(1)
        stale = torch.arange(t).unsqueeze(0) >= pos.unsqueeze(1)  # (B, T)
        bias = torch.zeros(b, t, dtype=x.dtype).masked_fill(stale, float("-inf")).view(b, 1, 1, t)
        ks, vs = [], []
        for li in range(s.n_layers):
            wqkv, wo, wgu, wd = weights[4 * li : 4 * li + 4]
            qkv = linear(x, wqkv) * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps_h)
            qk = qkv[:, :qk_dim].view(b, nq + nkv, hd)
            qk = qk * cos + torch.cat([-qk[..., half:], qk[..., :half]], -1) * sin
            q, k, v = qk[:, :nq].reshape(b, nkv, group, hd), qk[:, nq:], qkv[:, qk_dim:].reshape(b, nkv, hd)
            # products and sums, not matmul: a slot-major cache's (B, Hkv) do not flatten to one batch dim, and
            # bmm would copy every row's whole cache each step; Inductor fuses these into loops over the views
            old = (q.unsqueeze(-1) * k_old[:, li].unsqueeze(2)).sum(-2) + bias  # (B, Hkv, G, T)
            p = torch.softmax(torch.cat([old, (q * k.unsqueeze(2)).sum(-1, keepdim=True)], -1), -1)
            attn = (p[..., :-1].unsqueeze(-1) * v_old[:, li].unsqueeze(2)).sum(-2) + p[..., -1:] * v.unsqueeze(2)
            x = x + linear(attn.reshape(b, nq * hd), wo)
            gu = linear(x, wgu) * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps_h)
            x = x + linear(F.silu(gu[:, :inter]) * gu[:, inter:], wd)
            ks.append(k)
            vs.append(v)
        logits = linear(x, head) * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps_h)
        return logits, torch.stack(ks, 1), torch.stack(vs, 1)


def step_weights(backend: FastLlamaBackend) -> list[torch.Tensor]:
    return [w.contiguous() for layer in backend.step_layers for w in layer]


def example_inputs(spec: StepSpec) -> tuple:
    """Zero tensors with the shapes and strides the engine passes (cache views into a (.., P) buffer).

    The example cache length is half the context, not the minimum: Inductor sizes its parallel loops by it, and
    with a length of 3 it ran every attention loop on one thread while the other waited at the barrier."""
    dt = getattr(torch, spec.dtype)
    nl, nkv, hd, p = spec.n_layers, spec.n_kv, spec.head_dim, spec.max_positions
    qkv_rows = (spec.n_heads + 2 * nkv) * hd
    weights = []
    for _ in range(nl):
        weights += [torch.zeros(qkv_rows, spec.hidden, dtype=dt), torch.zeros(spec.hidden, spec.n_heads * hd, dtype=dt),
                    torch.zeros(2 * spec.inter, spec.hidden, dtype=dt), torch.zeros(spec.hidden, spec.inter, dtype=dt)]
    t = max(MIN_CACHE_LEN + 1, p // 2)
    k_cache, v_cache = torch.zeros(nl, nkv, hd, p, dtype=dt), torch.zeros(nl, nkv, p, hd, dtype=dt)
    return (torch.tensor([1]), torch.tensor([t]), k_cache.narrow(3, 0, t), v_cache.narrow(2, 0, t),
            torch.zeros(spec.vocab, spec.hidden, dtype=dt), torch.zeros(p, hd, dtype=dt), torch.zeros(p, hd, dtype=dt),
            torch.tensor(1e-5, dtype=dt), torch.zeros(spec.vocab, spec.hidden, dtype=dt), weights)


def batch_example_inputs(spec: StepSpec, batch: int = BATCH_ROWS) -> tuple:
    """As ``example_inputs``, for ``DecodeBatchStep``: B slots of a (S, L, Hkv, D, P) cache."""
    single = example_inputs(spec)
    t = int(single[1])
    nl, nkv, hd, p = spec.n_layers, spec.n_kv, spec.head_dim, spec.max_positions
    dt = getattr(torch, spec.dtype)
    k_slots, v_slots = torch.zeros(batch, nl, nkv, hd, p, dtype=dt), torch.zeros(batch, nl, nkv, p, hd, dtype=dt)
    toks, pos = torch.ones(batch, dtype=torch.long), torch.full((batch,), t, dtype=torch.long)
    return (toks, pos, k_slots.narrow(4, 0, t), v_slots.narrow(3, 0, t), *single[4:])
