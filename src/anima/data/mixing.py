"""Mixing: domain weights become per-example copy counts; rehearsal replays an earlier dataset.

Weights: an example of source s and domain d is written `w = sources.s.weight * sources.s.domain_weights[d]`
times in expectation (floor(w) copies plus one more with probability frac(w), decided by a seeded hash of
the example id). So with every weight 1 the mix is the data itself; emotion.weight=3 triples emotion's share
of the train split; 0.5 keeps about half. Only the train split is re-weighted: val/test measure the natural
distribution, and copies of one example share its split (the split hashes content), so nothing leaks.

Rehearsal: `ratio` is the share of the FINAL train split drawn from the earlier dataset's train split:
n = round(ratio / (1 - ratio) * n_new_train). With `top_ratio` < 1 only the best-scored (lowest reference
perplexity) part of it is eligible. Sampling is without replacement until the pool is exhausted, then the
pool is cycled again; everything is a pure function of `data.seed`. Replayed examples get persona: false
(they are earlier data, not this dataset's persona seed set).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from anima.data.split import unit_hash
from anima.errors import ConfigError, DataError


def check_weights(sources: Any) -> None:
    """Non-positive weights fail naming the key (the schema checks `weight`; this checks domain_weights)."""
    for name, src in sources.items():
        if float(src.weight) <= 0:
            raise ConfigError(f"data.sources.{name}.weight={src.weight} must be > 0")
        for dom, w in (src.domain_weights or {}).items():
            try:
                ok = float(w) > 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ConfigError(f"data.sources.{name}.domain_weights.{dom}={w} must be > 0")


def weight_of(src: Any, domain: str) -> float:
    return float(src.weight) * float((src.domain_weights or {}).get(domain, 1.0))


def copies(weight: float, example_id: str, seed: int) -> int:
    """floor(weight) copies, plus one with probability frac(weight) (seeded by the example id)."""
    whole = math.floor(weight)
    frac = weight - whole
    return whole + (1 if frac > 0 and unit_hash(f"{seed}:{example_id}") < frac else 0)


def rehearsal_count(ratio: float, n_new_train: int) -> int:
    return 0 if ratio <= 0 else int(round(ratio / (1 - ratio) * n_new_train))


def sample_rehearsal(pool: list[dict], n: int, top_ratio: float, seed: int, ref: str) -> list[dict]:
    """`n` examples of `pool` (its best-scored `top_ratio` when < 1), reproducibly from `seed`."""
    if n <= 0:
        return []
    if not pool:
        raise DataError(f"data.rehearsal.source={ref}: its train split is empty")
    if top_ratio < 1:
        if any(ex.get("score") is None for ex in pool):
            raise ConfigError(
                f"data.rehearsal.top_ratio={top_ratio}: the examples of {ref} have no scores; build it with "
                "data.filter.model=<reference model URI> (or use top_ratio=1)"
            )
        pool = sorted(pool, key=lambda ex: (ex["score"], ex["id"]))[: max(1, int(round(top_ratio * len(pool))))]
    rng = np.random.default_rng(seed)
    out: list[dict] = []
    while len(out) < n:
        order = rng.permutation(len(pool))
        out.extend(pool[i] for i in order[: n - len(out)])
    return out
