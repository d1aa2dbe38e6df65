"""Decode backends: something that holds a KV cache and turns new token ids into next-token logits.

Two implementations of the same small interface:

* ``HFBackend`` calls the transformers model with its own ``DynamicCache`` (the reference; works for
  any causal LM transformers can load).
* ``FastLlamaBackend`` is a minimal Llama forward written directly over the HF model's weights:
  fused QKV and gate/up matmuls, RoPE folded into one matmul per step (precomputed per-position
  rotation matrices), residual adds fused into ``addmm``, a preallocated KV cache, and logits only for
  the last position. Per generated token it runs ~12 torch ops per layer instead of the ~100+ small
  ops, Python hooks, cache objects and logits processors of ``generate`` -- on a tiny CPU model the
  per-op dispatch overhead, not the FLOPs, is what decides tokens/s.

Both expose: ``position`` (tokens in the cache), ``truncate(n)`` (forget everything after n, used to
reuse a shared prompt prefix), ``forward(ids) -> logits`` (1-D float32 logits after the last id), and the
slot interface the batch scheduler uses (``ensure_slots``, ``select``; the fast backend also ``swap_slots``
and ``step_batch``: one forward for one token of each of several sequences, each in its own cache slot).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F

from anima.generation.faster_path import FasterPath
from anima.generation.inference import in_inference_mode
from anima.generation.packed import linear, linear_add, pack, packed_addmv, packed_mv

_STATIC_ROPE = {"default", "linear", "llama3"}
_MAX_ROPE_TABLE_BYTES = 64 * 1024 * 1024


class DecodeBackend(Protocol):
    name: str
    position: int
    max_positions: int

    def truncate(self, n: int) -> None: ...

    def forward(self, ids: list[int]) -> torch.Tensor: ...


class HFBackend:
    """Plain transformers forward with a DynamicCache: slow but supports every model."""

    name = "hf"

    def __init__(self, model, max_positions: int):
        self.model = model
        self.max_positions = max_positions
        self.cache = None
        self.position = 0

    def ensure_slots(self, n: int) -> int:
        """One sequence at a time: transformers' cache objects are not batched here."""
        return 1

    def select(self, slot: int) -> None:
        if slot != 0:
            raise ValueError(f"hf backend has one slot, not {slot + 1}")

    def truncate(self, n: int) -> None:
        if n <= 0 or self.cache is None:
            self.cache, self.position = None, 0
            return
        if n < self.position:
            try:
                self.cache.crop(n - self.position)  # transformers 5: negative = tokens to remove
            except (ValueError, AttributeError):
                self.cache, self.position = None, 0
                return
        self.position = min(n, self.position)

    @in_inference_mode
    def forward(self, ids: list[int]) -> torch.Tensor:
        if self.position + len(ids) > self.max_positions:
            raise ValueError(f"sequence of {self.position + len(ids)} tokens exceeds the context of {self.max_positions}")
        input_ids = torch.tensor([ids], dtype=torch.long)
        out = self.model(input_ids=input_ids, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.cache = out.past_key_values
        self.position += len(ids)
        return out.logits[0, -1].float()


def causal_bias(t: int, start: int, dtype: torch.dtype) -> torch.Tensor:
    """(t, start + t) additive mask for t new tokens after `start` cached ones: 0 where a token may look, -inf after."""
    later = torch.arange(start + t) > torch.arange(start, start + t).unsqueeze(1)  # bool tril took ~0.17 ms
    return torch.zeros(t, start + t, dtype=dtype).masked_fill_(later, float("-inf"))


def fast_llama_unsupported(model) -> str | None:
    """Why the hand-written forward cannot run this model (None when it can)."""
    hf = model.config
    if getattr(hf, "model_type", None) != "llama":
        return f"model_type={getattr(hf, 'model_type', None)!r} is not llama"
    if getattr(hf, "hidden_act", "silu") != "silu":
        return f"hidden_act={hf.hidden_act!r}"
    if getattr(hf, "attention_bias", False) or getattr(hf, "mlp_bias", False):
        return "attention/mlp bias"
    rope = getattr(hf, "rope_parameters", None) or getattr(hf, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type not in _STATIC_ROPE:
        return f"rope_type={rope_type!r}"
    if next(model.parameters()).device.type != "cpu":
        return "model is not on the CPU"
    return None


class FastLlamaBackend:
    """Minimal Llama decode over the HF model's weights (checked against HF logits in the tests)."""

    name = "fast"

    def __init__(self, model, max_positions: int | None = None):
        why = fast_llama_unsupported(model)
        if why:
            raise ValueError(f"fast backend unsupported: {why}")
        hf = model.config  # transformers' LlamaConfig from the model's config.json, not an anima config
        self.n_heads = hf.num_attention_heads
        self.n_kv = getattr(hf, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // self.n_heads
        self.hidden = hf.hidden_size
        self.eps = float(hf.rms_norm_eps)
        self.max_positions = int(max_positions or hf.max_position_embeddings)
        self.dtype = next(model.parameters()).dtype
        hd, nq, nkv = self.head_dim, self.n_heads, self.n_kv
        self.q_dim, self.kv_dim = nq * hd, nkv * hd

        inner = model.model
        with torch.no_grad():
            self.embed = inner.embed_tokens.weight.detach()
            self.final_norm = inner.norm.weight.detach()
            self.lm_head = model.lm_head.weight.detach()
            self.layers = []
            for layer in inner.layers:
                at, mlp = layer.self_attn, layer.mlp
                wqkv = torch.cat([at.q_proj.weight, at.k_proj.weight, at.v_proj.weight], 0).contiguous()
                wgu = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight], 0).contiguous()
                self.layers.append(
                    (
                        layer.input_layernorm.weight.detach(),
                        wqkv,
                        at.o_proj.weight.detach().t(),  # transposed view: addmm(x, a, W^T)
                        layer.post_attention_layernorm.weight.detach(),
                        wgu,
                        mlp.down_proj.weight.detach().t(),
                    )
                )
            self.inter = self.layers[0][4].shape[0] // 2
            # RoPE tables from the model's own rotary module, so scaling variants match exactly.
            pos = torch.arange(self.max_positions).unsqueeze(0)
            probe = torch.zeros(1, dtype=self.dtype)
            cos, sin = inner.rotary_emb(probe, pos)
            cos, sin = cos[0].to(self.dtype), sin[0].to(self.dtype)  # (P, D)
        self.cos, self.sin = cos, sin
        half = hd // 2
        # rotate_half(x) == x @ R
        rot = torch.zeros(hd, hd, dtype=self.dtype)
        idx = torch.arange(half)
        rot[idx + half, idx] = -1.0
        rot[idx, idx + half] = 1.0
        self.rot = rot
        table_bytes = self.max_positions * hd * hd * torch.finfo(self.dtype).bits // 8
        if table_bytes <= _MAX_ROPE_TABLE_BYTES:
            # rope(x) = x*cos + rotate_half(x)*sin = x @ (diag(cos) + R*sin): one matmul per step.
            self.rope_mats = torch.diag_embed(cos) + rot.unsqueeze(0) * sin.unsqueeze(1)
        else:
            self.rope_mats = None
        # KV cache per slot (one sequence each), head-major; K stored transposed (Hkv, D, P) so the step's
        # q @ K^T needs no transpose. ``k_cache``/``v_cache`` are the selected slot's (L, Hkv, D, P) views.
        self.positions = [0]
        self.slot = 0
        self.k_slots = torch.zeros(1, len(self.layers), nkv, hd, self.max_positions, dtype=self.dtype)
        self.v_slots = torch.zeros(1, len(self.layers), nkv, self.max_positions, hd, dtype=self.dtype)
        self.select(0)
        self.scale = 1.0 / math.sqrt(hd)
        self._build_step_weights()
        self.packed = pack(self.step_layers, self.dtype)
        head = pack([(self.step_head,)], self.dtype) if self.packed else None
        self.packed_head = head[0][0] if head else self.step_head  # a head too big to copy stays plain
        self.step_ways = FasterPath(("mv", "packed"))  # per thread count, timed on this machine

    # ------------------------------------------------------------ slots (see generation/batch.py)
    @property
    def position(self) -> int:
        """Tokens in the selected slot's cache."""
        return self.positions[self.slot]

    @position.setter
    def position(self, n: int) -> None:
        self.positions[self.slot] = n

    @property
    def slots(self) -> int:
        return len(self.positions)

    def ensure_slots(self, n: int) -> int:
        """Grow the cache to ``n`` sequences (keeping what the existing slots hold); returns the slot count."""
        have = self.slots
        if n > have:
            k = torch.zeros(n, *self.k_slots.shape[1:], dtype=self.dtype)
            v = torch.zeros(n, *self.v_slots.shape[1:], dtype=self.dtype)
            k[:have], v[:have] = self.k_slots, self.v_slots
            self.k_slots, self.v_slots = k, v
            self.positions += [0] * (n - have)
            self.select(self.slot)
        return self.slots

    def select(self, slot: int) -> None:
        """Make ``slot`` the one ``forward``/``truncate``/``position`` act on."""
        self.slot = slot
        self.k_cache, self.v_cache = self.k_slots[slot], self.v_slots[slot]

    def swap_slots(self, a: int, b: int) -> None:
        """Exchange two sequences' caches (the batch keeps its active sequences in slots 0..B-1)."""
        if a == b:
            return
        n = max(self.positions[a], self.positions[b])
        if n:  # through one temporary per cache: 4x faster than an index_put of both slots (~0.13 vs 0.53 ms)
            for x, y in ((self.k_slots[a, ..., :n], self.k_slots[b, ..., :n]),
                         (self.v_slots[a, :, :, :n], self.v_slots[b, :, :, :n])):
                held = x.clone()
                x.copy_(y)
                y.copy_(held)
        self.positions[a], self.positions[b] = self.positions[b], self.positions[a]

    @in_inference_mode
    def step_batch(self, toks: list[int]) -> torch.Tensor:
        """One token for each of slots 0..B-1 (B = len(toks)) at its own position: one batched forward, so the
        weights are read once per step for the whole batch. Returns (B, vocab) float32 logits."""
        return self._step_batch(toks)

    def _step_batch(self, toks: list[int]) -> torch.Tensor:
        b = len(toks)
        pos_list = self.positions[:b]
        end = max(pos_list) + 1
        if end > self.max_positions:
            raise ValueError(f"sequence of {end} tokens exceeds the context of {self.max_positions}")
        nq, nkv, hd, inter = self.n_heads, self.n_kv, self.head_dim, self.inter
        qk_rows, qk_dim = nq + nkv, self.q_dim + self.kv_dim
        pos = torch.tensor(pos_list)
        rows = torch.arange(b)
        x = self.embed[torch.tensor(toks)]
        if self.rope_mats is not None:
            rope = self.rope_mats[pos]  # (B, D, D)
        else:
            cos, sin = self.cos[pos].unsqueeze(1), self.sin[pos].unsqueeze(1)
        # rows attend to 0..pos_b: mask the longer rows' tail out (exp(-inf) = 0 adds nothing)
        mask = (torch.arange(end).unsqueeze(0) > pos.unsqueeze(1)).view(b, 1, 1, end) if min(pos_list) + 1 < end else None
        eps_h = self.eps_h
        for li, (wqkv, wo, wgu, wd) in enumerate(self.matmul_weights()):
            qkv = linear(x, wqkv).mul_(x.pow(2).sum(-1, keepdim=True).add_(eps_h).rsqrt_())
            qk = qkv[:, :qk_dim].view(b, qk_rows, hd)
            qk = torch.bmm(qk, rope) if self.rope_mats is not None else qk * cos + torch.matmul(qk, self.rot) * sin
            ks, vs = self.k_slots[:b, li], self.v_slots[:b, li]
            ks[rows, :, :, pos] = qk[:, nq:]
            vs[rows, :, pos] = qkv[:, qk_dim:].view(b, nkv, hd)
            scores = torch.matmul(qk[:, :nq].view(b, nkv, nq // nkv, hd), ks[..., :end])  # (B, Hkv, G, T)
            if mask is not None:
                scores.masked_fill_(mask, float("-inf"))
            attn = torch.matmul(torch.softmax(scores, -1), vs[:, :, :end])  # (B, Hkv, G, D)
            x = linear_add(attn.reshape(b, self.q_dim), wo, x)
            gu = linear(x, wgu).mul_(x.pow(2).sum(-1, keepdim=True).add_(eps_h).rsqrt_())
            x = linear_add(F.silu(gu[:, :inter]).mul_(gu[:, inter:]), wd, x)
        for i in range(b):
            self.positions[i] += 1
        return linear(x, self.packed_head).mul_(x.pow(2).sum(-1, keepdim=True).add_(eps_h).rsqrt_())

    def _build_step_weights(self) -> None:
        """Weights for the single-token step with constant factors folded in (fewer ops per token):
        RMSNorm gains and sqrt(hidden) go into the next matmul's input columns, 1/sqrt(head_dim) into W_q."""
        root = math.sqrt(self.hidden)
        q_scale = torch.ones(self.q_dim + 2 * self.kv_dim, 1, dtype=self.dtype)
        q_scale[: self.q_dim] = self.scale
        self.step_layers = []
        for ln1, wqkv, wo_t, ln2, wgu, wd_t in self.layers:
            self.step_layers.append(
                (
                    (wqkv * (ln1 * root).unsqueeze(0) * q_scale).contiguous(),
                    wo_t.t(),
                    (wgu * (ln2 * root).unsqueeze(0)).contiguous(),
                    wd_t.t(),
                )
            )
        self.step_head = (self.lm_head * (self.final_norm * root).unsqueeze(0)).contiguous()
        self.eps_h = torch.tensor(self.eps * self.hidden, dtype=self.dtype)  # a tensor: no scalar wrapping per op

    def truncate(self, n: int) -> None:
        self.position = max(0, min(n, self.position))

    def _rope(self, x: torch.Tensor, start: int, t: int) -> torch.Tensor:
        """x: (T, heads, D) at positions start..start+T-1."""
        if self.rope_mats is not None:
            if t == 1:
                return torch.matmul(x, self.rope_mats[start])
            return torch.matmul(x, self.rope_mats[start : start + t])
        cos = self.cos[start : start + t].unsqueeze(1)
        sin = self.sin[start : start + t].unsqueeze(1)
        return torch.addcmul(x * cos, torch.matmul(x, self.rot), sin)

    @in_inference_mode
    def forward(self, ids: list[int]) -> torch.Tensor:
        if len(ids) == 1:
            return self._step(ids[0])
        return self._prefill(ids)

    def _step(self, tok: int) -> torch.Tensor:
        """One token, by whichever matrix-vector kernel has been faster at this thread count here
        (``step_ways``): BLAS's mv, or oneDNN's linear on the packed weights. MKL's sgemv streams weights at
        ~8 GB/s on a 2-core EPYC Zen 4, where oneDNN's reaches ~16 at 2 threads (the 25 matrices of tiny: 3.5
        vs 1.8 ms); on other CPUs mv may win."""
        if self.packed is None:
            return self._step_with(tok, "mv")
        return self.step_ways.run(torch.get_num_threads(), lambda way: self._step_with(tok, way))

    def _step_with(self, tok: int, way: str) -> torch.Tensor:
        """One token. Everything is a 1-D vector (a (1, N) row for oneDNN), so each matmul is a single
        mv/addmv and no select/unsqueeze views are needed; ~17 torch ops per layer."""
        pos = self.position
        end = pos + 1
        if end > self.max_positions:
            raise ValueError(f"sequence of {end} tokens exceeds the context of {self.max_positions}")
        nq, nkv, hd = self.n_heads, self.n_kv, self.head_dim
        qk_rows, qk_dim, q_dim = nq + nkv, self.q_dim + self.kv_dim, self.q_dim
        inter, eps_h = self.inter, self.eps_h
        group = nq // nkv
        rope = self.rope_mats[pos] if self.rope_mats is not None else None
        x = self.embed[tok]
        dot, bmm, softmax, silu, mm = torch.dot, torch.bmm, torch.softmax, F.silu, torch.mm
        mv, addmv = (packed_mv, packed_addmv) if way == "packed" else (torch.mv, torch.addmv)
        weights = self.packed if way == "packed" else self.step_layers
        head = self.packed_head if way == "packed" else self.step_head
        for (wqkv, wo, wgu, wd), (*_, k_new, v_new, k_all, v_all) in zip(weights, self.step_layers_at(pos)):
            # RMSNorm as a scale on the matmul output: W(x * r) == (Wx) * r; gains/sqrt(H) are in W.
            qkv = mv(wqkv, x).mul_(dot(x, x).add_(eps_h).rsqrt_())
            if rope is not None:
                qk = mm(qkv[:qk_dim].view(qk_rows, hd), rope)  # (H+Hkv, D), RoPE applied
            else:
                qk = self._rope(qkv[:qk_dim].view(1, qk_rows, hd), pos, 1).view(qk_rows, hd)
            k_new.copy_(qk[nq:])
            v_new.copy_(qkv[qk_dim:].view(nkv, hd))
            # (Hkv, G, D) @ (Hkv, D, L): grouped-query attention without repeating K/V
            probs = softmax(bmm(qk[:nq].view(nkv, group, hd), k_all), dim=-1)
            x = addmv(x, wo, bmm(probs, v_all).view(q_dim))
            gu = mv(wgu, x).mul_(dot(x, x).add_(eps_h).rsqrt_())
            x = addmv(x, wd, silu(gu[:inter]).mul_(gu[inter:]))
        self.position = end
        return mv(head, x).mul_(dot(x, x).add_(eps_h).rsqrt_())

    def step_layers_at(self, pos: int):
        """Per layer: weights, the cache slots for position ``pos`` and the K^T / V views up to it."""
        end = pos + 1
        for li, (wqkv, wo, wgu, wd) in enumerate(self.step_layers):
            kc, vc = self.k_cache[li], self.v_cache[li]
            yield wqkv, wo, wgu, wd, kc.select(2, pos), vc.select(1, pos), kc.narrow(2, 0, end), vc.narrow(1, 0, end)

    def _prefill(self, ids: list[int]) -> torch.Tensor:
        """Several tokens in one pass, on the folded step weights (RMSNorm as a scale on each matmul's output,
        1/sqrt(head_dim) inside W_q), oneDNN-packed where available."""
        t = len(ids)
        start = self.position
        end = start + t
        if end > self.max_positions:
            raise ValueError(f"sequence of {end} tokens exceeds the context of {self.max_positions}")
        nq, nkv, hd, eps_h = self.n_heads, self.n_kv, self.head_dim, self.eps_h
        q_dim, qk_dim, inter = self.q_dim, self.q_dim + self.kv_dim, self.inter
        x = self.embed[torch.tensor(ids, dtype=torch.long)] if t > 1 else self.embed[ids[0]].unsqueeze(0)
        group = nq // nkv
        bias = causal_bias(t, start, x.dtype).repeat(group, 1) if t > 1 else None  # (G*T, L)
        for li, (wqkv, wo, wgu, wd) in enumerate(self.matmul_weights()):
            qkv = linear(x, wqkv).mul_(x.pow(2).sum(-1, keepdim=True).add_(eps_h).rsqrt_())  # (T, q+2kv)
            qk = self._rope(qkv[:, :qk_dim].view(t, nq + nkv, hd), start, t)
            kc, vc = self.k_cache[li], self.v_cache[li]
            kc[:, :, start:end] = qk[:, nq:].permute(1, 2, 0)
            vc[:, start:end] = qkv[:, qk_dim:].view(t, nkv, hd).transpose(0, 1)
            # Against the cache's own K^T layout (Hkv, D, L), each K/V head with its G query heads as G*T rows:
            # SDPA on a transposed view of it was slower (a whole prefill 1.01-1.12x faster so, Xeon Ice Lake).
            q = qk[:, :nq].reshape(t, nkv, group, hd).permute(1, 2, 0, 3).reshape(nkv, group * t, hd)
            k_t = kc[:, :, :end]
            scores = torch.bmm(q, k_t) if bias is None else torch.baddbmm(bias, q, k_t)  # scale is in W_q
            attn = torch.bmm(torch.softmax(scores, -1), vc[:, :end])  # (Hkv, G*T, D)
            attn = attn.view(nkv, group, t, hd).permute(2, 0, 1, 3).reshape(t, q_dim)
            x = linear_add(attn, wo, x)
            gu = linear(x, wgu).mul_(x.pow(2).sum(-1, keepdim=True).add_(eps_h).rsqrt_())
            x = linear_add(F.silu(gu[:, :inter]).mul_(gu[:, inter:]), wd, x)
        self.position = end
        h = x[-1]
        return packed_mv(self.packed_head, h).mul_(h.dot(h).add_(eps_h).rsqrt_()).float()

    def matmul_weights(self) -> list[tuple]:
        """Per layer (W_qkv, W_o, W_gu, W_down) of the folded step weights for several rows at once: oneDNN-packed
        when ``packed`` holds them, else plain (x @ W^T either way, through ``packed.linear``/``linear_add``)."""
        return self.packed or self.step_layers

