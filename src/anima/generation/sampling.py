"""Sampling settings and the logits processors of one decode step.

The processors work on a 1-D logits vector (one sequence, batch 1): the chat engine decodes one
request at a time, so there is no batch dimension to carry and every op stays small.
Order and semantics follow transformers' ``generate``: repetition penalty, temperature, top-k, top-p; OpenAI's
presence and frequency penalties (over the tokens generated so far) come right after the repetition penalty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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
    import torch

    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=False)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = cum <= (1.0 - p)
    drop_sorted[-1] = False
    drop = torch.empty_like(drop_sorted).scatter_(0, order, drop_sorted)
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


# How many top candidates the fast sampler looks at before falling back to the full-vocabulary path.
CANDIDATES = 64


def _draw(cum: torch.Tensor, generator: torch.Generator | None) -> int:
    """Inverse-CDF draw from unnormalized cumulative weights (one uniform number, one binary search;
    ~20x cheaper than torch.multinomial or a full-vocabulary exponential race on CPU)."""
    import torch

    u = torch.rand(1, generator=generator, dtype=cum.dtype).mul_(cum[-1])
    i = int(torch.searchsorted(cum, u, right=True))
    if i >= cum.numel():  # u rounded up to the total: take the last token with nonzero weight
        i = int(torch.searchsorted(cum, cum[-1:]))
    return i


def sample_next(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    seen: torch.Tensor | None = None,
    counts: torch.Tensor | None = None,
) -> int:
    """Pick the next token id from one step's logits.

    Same distribution as ``process_logits`` + softmax + multinomial (transformers' semantics), but
    top-p/top-k look at the best ``CANDIDATES`` logits first: when the nucleus lies inside them (the
    usual case for a trained model) no full-vocabulary sort or multinomial is needed. Otherwise it
    falls back to the exact full-vocabulary path.
    """
    import torch

    logits = logits.float()
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    logits = apply_occurrence_penalties(logits, counts, params.presence_penalty, params.frequency_penalty)
    if params.greedy:
        return int(torch.argmax(logits))
    if params.temperature != 1.0:
        logits = logits / params.temperature
    vocab = logits.numel()
    top_k = params.top_k if 0 < params.top_k < vocab else 0
    top_p = params.top_p
    k = top_k or (CANDIDATES if top_p < 1.0 else 0)
    if 0 < k < vocab and k <= max(CANDIDATES, top_k if top_k <= 4 * CANDIDATES else 0):
        vals, idx = torch.topk(logits, k)  # sorted, largest first
        if top_k:  # top-p then acts on the renormalized top-k distribution (as transformers does)
            probs = torch.softmax(vals, 0)
        else:
            probs = (vals - torch.logsumexp(logits, 0)).exp_()
        cum = probs.cumsum(0)
        if top_p >= 1.0:
            return int(idx[_draw(cum, generator)])
        if top_k or float(cum[-1]) >= top_p:
            # keep a token while the mass of strictly more likely tokens is < top_p
            keep = max(1, int(((cum - probs) < top_p).sum()))
            return int(idx[_draw(cum[:keep], generator)])
    logits = apply_top_p(apply_top_k(logits, top_k), top_p)
    return int(_draw(torch.softmax(logits, 0).cumsum(0), generator))
