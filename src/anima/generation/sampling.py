"""Sampling settings and the logits processors of one decode step.

The processors work on a 1-D logits vector (one sequence). ``sample_batch`` draws the next token of every
sequence of a batched decode step with one set of ops over the (B, vocab) logits: per-row Python sampling cost
more than the batched forward itself. Each row's numbers depend only on its own logits, parameters and
generator (rows are grouped by the path their parameters select), so a seeded request draws the same token
alone or batched.
Order and semantics follow transformers' ``generate``: repetition penalty, temperature, top-k, top-p; OpenAI's
presence and frequency penalties (over the tokens generated so far) come right after the repetition penalty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from anima.errors import ConfigError

if TYPE_CHECKING:  # torch is imported inside the functions: importing SamplingParams stays cheap
    import torch


#: The most alternatives per token a request may ask log-probabilities for (OpenAI's top_logprobs limit).
MAX_TOP_LOGPROBS = 20


@dataclass
class SamplingParams:
    temperature: float = 0.8  # 0 => greedy
    top_p: float = 0.95
    top_k: int = 0  # 0 => off
    repetition_penalty: float = 1.0
    max_new_tokens: int = 128
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    # OpenAI's penalties over this reply's tokens: logit -= presence * (count > 0) + frequency * count
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # None => off; k => every token's log-probability and its k likeliest rivals

    def validate(self) -> "SamplingParams":
        """Reject values that would silently produce garbage; names the key at fault."""
        if self.temperature < 0:
            raise ConfigError(f"sampling.temperature={self.temperature}: must be >= 0 (0 = greedy)")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"sampling.top_p={self.top_p}: must be in (0, 1]")
        if self.top_k < 0:
            raise ConfigError(f"sampling.top_k={self.top_k}: must be >= 0 (0 = off)")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"sampling.repetition_penalty={self.repetition_penalty}: must be > 0")
        if self.max_new_tokens < 0:
            raise ConfigError(f"sampling.max_new_tokens={self.max_new_tokens}: must be >= 0")
        for key in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, key) <= 2.0:
                raise ConfigError(f"sampling.{key}={getattr(self, key)}: must be in [-2, 2]")
        lp = self.logprobs
        if lp is not None and (isinstance(lp, bool) or not isinstance(lp, int) or not 0 <= lp <= MAX_TOP_LOGPROBS):
            raise ConfigError(f"sampling.logprobs={lp}: must be an integer in 0..{MAX_TOP_LOGPROBS} (or None = off)")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in self.stop if s]
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def sampling_from_config(sampling: Any, seed: int | None = None) -> SamplingParams:
    """The ``sampling`` config group (DictConfig or SamplingConfig) as the engine's SamplingParams, validated
    so that a bad value fails naming its key. ``seed`` applies when the group sets none (a stage's own seed)."""
    own_seed = getattr(sampling, "seed", None)
    return SamplingParams(
        temperature=float(sampling.temperature), top_p=float(sampling.top_p), top_k=int(sampling.top_k),
        repetition_penalty=float(sampling.repetition_penalty), max_new_tokens=int(sampling.max_new_tokens),
        seed=int(own_seed) if own_seed is not None else seed,
    ).validate()


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty on every token already seen (divide positive logits, multiply negative).

    ``seen`` is either a bool mask over the vocabulary (what the engine keeps, O(1) per step) or a
    tensor of token ids (duplicates allowed), as transformers' processor takes.
    """
    import torch

    if penalty == 1.0 or seen.numel() == 0:
        return logits
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    if seen.dtype == torch.bool:
        return torch.where(seen, penalized, logits)
    mask = torch.zeros_like(logits, dtype=torch.bool)
    mask[seen.long()] = True
    return torch.where(mask, penalized, logits)


def apply_occurrence_penalties(logits: torch.Tensor, counts: torch.Tensor | None, presence: float,
                               frequency: float) -> torch.Tensor:
    """OpenAI's presence and frequency penalties; ``counts[j]`` = how often token j was generated so far."""
    if counts is None or (presence == 0.0 and frequency == 0.0):
        return logits
    return logits - presence * (counts > 0).to(logits.dtype) - frequency * counts.to(logits.dtype)


def token_logprobs(logits: torch.Tensor, token: int, k: int = 0) -> tuple[float, list[tuple[int, float]]]:
    """``token``'s log-probability under ``logits`` (the model's own distribution) and the ``k`` most likely
    (id, log-probability) pairs, most likely first."""
    import torch

    lp = torch.log_softmax(logits.float(), -1)
    top: list[tuple[int, float]] = []
    if k > 0:
        vals, idx = torch.topk(lp, min(k, lp.numel()))
        top = [(int(i), float(v)) for v, i in zip(vals.tolist(), idx.tolist())]
    return float(lp[token]), top


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits (ties at the k-th value are kept, like transformers)."""
    import torch

    if k <= 0 or k >= logits.numel():
        return logits
    kth = torch.topk(logits, k).values[-1]
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of tokens whose probability mass reaches p.

    Same rule as transformers' TopPLogitsWarper: drop a token when the mass of all tokens *less*
    likely than it is <= 1 - p; the most likely token always survives.
    """
    if p >= 1.0:
        return logits
    return _drop_tail(logits, 1.0 - p)


def _drop_tail(logits: torch.Tensor, tail: float | torch.Tensor) -> torch.Tensor:
    """Top-p over the last dim: -inf for tokens whose less likely rivals hold <= ``tail`` (= 1 - p) of the mass;
    ``tail``: a number, or one per row ((B, 1), float32; < 0 keeps the whole row)."""
    import torch

    sorted_logits, order = torch.sort(logits, descending=False)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = cum <= tail
    drop_sorted[..., -1] = False
    drop = torch.empty_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def process_logits(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor | None = None,
                   counts: torch.Tensor | None = None) -> torch.Tensor:
    """All processors in transformers' order; returns the logits to sample from (float32, 1-D)."""
    logits = logits.float()
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    logits = apply_occurrence_penalties(logits, counts, params.presence_penalty, params.frequency_penalty)
    if params.greedy:
        return logits
    if params.temperature != 1.0:
        logits = logits / params.temperature
    logits = apply_top_k(logits, params.top_k)
    logits = apply_top_p(logits, params.top_p)
    return logits


def make_generator(seed: int | None) -> torch.Generator:
    """One generator per request, so concurrent requests never disturb each other's stream."""
    import torch

    gen = torch.Generator(device="cpu")
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


#: Top-k rows with k up to this sample among their k best logits; a larger k takes the full-vocabulary path.
TOP_K_SHORTCUT = 256


def _draw(cum: torch.Tensor, keep: torch.Tensor, generators: list) -> torch.Tensor:
    """Inverse-CDF draws, one per row of unnormalized cumulative weights ``cum`` (B, N), among each row's first
    ``keep`` (B, 1) entries: one uniform number from the row's own generator and one binary search (~20x cheaper
    than torch.multinomial on CPU). Returns (B, 1) column indices."""
    import torch

    total = cum.gather(1, keep - 1)
    u = torch.cat([torch.rand(1, generator=g, dtype=cum.dtype) for g in generators]).view(-1, 1)
    i = torch.searchsorted(cum, u.mul_(total), right=True)
    # u rounded up to the total: take the last token with nonzero weight
    return torch.where(i >= keep, torch.searchsorted(cum, total), i)


def _sample_top_k(x: torch.Tensor, k: int, params: list[SamplingParams], generators: list) -> list[int]:
    """Rows of ``x`` with top-k = ``k``: top-p acts on the renormalized top-k distribution (as transformers does)."""
    import torch

    vals, idx = torch.topk(x, k)  # sorted, largest first
    probs = torch.softmax(vals, -1)
    cum = probs.cumsum(-1)
    top_p = torch.tensor([[p.top_p if p.top_p < 1.0 else 2.0] for p in params], dtype=cum.dtype)
    # keep a token while the mass of strictly more likely tokens is < top_p
    keep = ((cum - probs) < top_p).sum(-1, keepdim=True).clamp_(min=1)
    return idx.gather(1, _draw(cum, keep, generators)).view(-1).tolist()


#: Draws the full-vocabulary path tries before it sorts (a row keeping mass m needs 1/m draws on average).
FULL_DRAWS = 8


def _temperatures(params: list[SamplingParams], dtype: torch.dtype) -> torch.Tensor:
    import torch

    return torch.tensor([[p.temperature] for p in params], dtype=dtype)


def _sample_full(x: torch.Tensor, params: list[SamplingParams], generators: list,
                 draw: Callable | None = None) -> list[int]:
    """The full-vocabulary path for rows of logits ``x`` (not yet divided by the temperature): top-k (per row, rare
    here), then top-p by rejection: draw from the whole tempered softmax and keep the token when the tokens strictly
    more likely than it hold < top_p of the mass (exactly the nucleus, renormalized). No sort of the vocabulary
    (about 0.6 ms a row on CPU) unless a row's nucleus is so small that ``FULL_DRAWS`` draws all miss it. A try
    runs in ``draw`` (one native call: softmax, draw and check) when given, else as torch ops; either way each try
    takes one uniform from each row's generator."""
    import torch

    if any(0 < p.top_k < x.shape[-1] for p in params):
        x = torch.stack([apply_top_k(row, p.top_k) for row, p in zip(x, params)])
    one_try = _native_try(x, params, generators, draw) if draw is not None else \
        _torch_try(x / _temperatures(params, x.dtype), params, generators)
    out: list[int | None] = [None] * len(params)
    rows = list(range(len(params)))
    for _ in range(FULL_DRAWS):
        for r, tok in zip(rows, one_try(rows)):
            if tok is not None:
                out[r] = tok
        rows = [r for r in rows if out[r] is None]
        if not rows:
            return out  # type: ignore[return-value]
    missed = [params[r] for r in rows]
    tail = torch.tensor([[1.0 - p.top_p] for p in missed], dtype=x.dtype)
    cum = torch.softmax(_drop_tail(x[rows] / _temperatures(missed, x.dtype), tail), -1).cumsum(-1)
    keep = torch.full((len(rows), 1), x.shape[-1], dtype=torch.long)
    for r, tok in zip(rows, _draw(cum, keep, [generators[r] for r in rows]).view(-1).tolist()):
        out[r] = tok
    return out  # type: ignore[return-value]


def _torch_try(x: torch.Tensor, params: list[SamplingParams],
               generators: list) -> Callable[[list[int]], list[int | None]]:
    """One rejection try for the listed rows of tempered logits ``x`` as torch ops: each row's token, or None where
    it missed the nucleus."""
    import torch

    probs = torch.softmax(x, -1)
    cum = probs.cumsum(-1)
    top_p = torch.tensor([[p.top_p if p.top_p < 1.0 else 2.0] for p in params], dtype=x.dtype)

    def one_try(rows: list[int]) -> list[int | None]:
        sub = (x, probs, cum, top_p) if len(rows) == len(params) else (x[rows], probs[rows], cum[rows], top_p[rows])
        keep = torch.full((len(rows), 1), x.shape[-1], dtype=torch.long)
        toks = _draw(sub[2], keep, [generators[r] for r in rows])
        above = sub[1].masked_fill(sub[0] <= sub[0].gather(1, toks), 0.0).sum(-1, keepdim=True)
        return [tok if ok else None for tok, ok in zip(toks.view(-1).tolist(), (above < sub[3]).view(-1).tolist())]

    return one_try


def _native_try(x: torch.Tensor, params: list[SamplingParams], generators: list,
                draw: Callable) -> Callable[[list[int]], list[int | None]]:
    """The same try through the native ``draw`` (it divides by the temperature itself): the same uniforms, one
    call for all the listed rows."""
    import torch

    x = x.contiguous()
    inv_temp = [1.0 / p.temperature for p in params]

    def one_try(rows: list[int]) -> list[int | None]:
        u = torch.cat([torch.rand(1, generator=generators[r], dtype=x.dtype) for r in rows])
        return [tok if tok >= 0 else None
                for tok in draw(x, rows, [inv_temp[r] for r in rows], u, [params[r].top_p for r in rows])]

    return one_try


def greedy_tokens(logits: torch.Tensor) -> list[int]:
    """The highest-scoring token of each row of float ``logits`` (B, vocab), the first of ties, as torch's argmax.
    Through numpy: 1.3 us for a 4,096-token row where torch's argmax takes 6-13 us, once per greedy token."""
    if logits.device.type != "cpu":
        return logits.argmax(-1).tolist()
    return logits.numpy().argmax(-1).tolist()


def sample_batch(logits: torch.Tensor, params: list[SamplingParams], generators: list,
                 seen: list | None = None, counts: list | None = None, draw: Callable | None = None) -> list[int]:
    """The next token of each row of ``logits`` (B, vocab) under its own parameters, generator, repetition mask
    (``seen[i]``) and occurrence counts (``counts[i]``), with one set of ops over all rows. ``draw``: the native
    kernel's draws for the full-vocabulary path (native_step.NativeDraw), when the backend has one.

    Same distribution as ``process_logits`` + softmax + multinomial (transformers' semantics), without sorting
    the vocabulary: top-k rows sample among their k best logits, top-p rows by rejection (``_sample_full``)."""
    x, b = logits.float(), len(params)
    penalized = [i for i in range(b) if (seen and seen[i] is not None) or (counts and counts[i] is not None)]
    if penalized:
        x = x.clone() if x is logits else x
        for i in penalized:
            p, row = params[i], x[i]
            if seen and seen[i] is not None:
                row = apply_repetition_penalty(row, seen[i], p.repetition_penalty)
            x[i] = apply_occurrence_penalties(row, counts[i] if counts else None, p.presence_penalty,
                                              p.frequency_penalty)
    out = [0] * b
    greedy = [i for i in range(b) if params[i].greedy]
    if greedy:
        for i, tok in zip(greedy, greedy_tokens(x if len(greedy) == b else x[greedy])):
            out[i] = tok
    if len(greedy) == b:
        return out
    rows = [i for i in range(b) if not params[i].greedy]
    x = x if len(rows) == b else x[rows]
    groups: dict[int, list[int]] = {}  # top-k (0: the full-vocabulary path) -> positions in ``rows``
    for j, i in enumerate(rows):
        k = params[i].top_k
        groups.setdefault(k if 0 < k <= TOP_K_SHORTCUT and k < x.shape[-1] else 0, []).append(j)
    for k, js in groups.items():
        sub = x if len(js) == len(rows) else x[js]
        ps, gens = [params[rows[j]] for j in js], [generators[rows[j]] for j in js]
        picks = _sample_top_k(sub / _temperatures(ps, x.dtype), k, ps, gens) if k else \
            _sample_full(sub, ps, gens, draw)
        for j, tok in zip(js, picks):
            out[rows[j]] = tok
    return out


def sample_next(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    seen: torch.Tensor | None = None,
    counts: torch.Tensor | None = None,
) -> int:
    """Pick the next token id from one step's 1-D logits (``sample_batch`` over one row)."""
    return sample_batch(logits.unsqueeze(0), [params], [generator], [seen], [counts])[0]
