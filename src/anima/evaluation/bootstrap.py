"""Seeded bootstrap intervals over examples, for one model's metric and for a paired difference of two.

Each metric is a statistic of a set of example indices (see example_stats), so the interval resamples the
*examples* (with replacement) and recomputes the metric exactly as the point value is computed: corpus-level
metrics (chrF, distinct-n, perplexity) stay corpus-level inside every resample (distinct-n counts each drawn copy
of a reply as its own reply, else duplicates would read as repeats: example_stats._distinct). The paired version draws the
same indices for both models, so a difference is measured on identical examples (Efron & Tibshirani 1993,
percentile interval; Koehn 2004 for paired bootstrap resampling of MT metrics).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

Stat = Callable[[np.ndarray], float]
RESAMPLES = 1000


@dataclass(frozen=True)
class Interval:
    value: float  # the statistic on all examples (a difference: a minus b)
    low: float
    high: float
    n: int  # examples resampled
    confidence: float = 0.95

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict:
        return asdict(self)


def _indices(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _interval(value: float, samples: list[float], n: int, confidence: float) -> Interval:
    arr = np.asarray([s for s in samples if math.isfinite(s)], dtype=float)
    if n < 2 or arr.size == 0:
        return Interval(value, value, value, n, confidence)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(arr, [tail, 100 - tail])
    return Interval(value, float(low), float(high), n, confidence)


def bootstrap(stat: Stat, n: int, *, confidence: float = 0.95, resamples: int = RESAMPLES, seed: int = 0
              ) -> Interval:
    """Percentile interval of ``stat`` over ``resamples`` resamples of ``n`` examples (seeded: reproducible)."""
    value = float(stat(np.arange(n)))
    if n < 2:
        return Interval(value, value, value, n, confidence)
    return _interval(value, [float(stat(i)) for i in _indices(n, resamples, seed)], n, confidence)


def paired_bootstrap(stat_a: Stat, stat_b: Stat, n: int, *, confidence: float = 0.95,
                     resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """Interval of ``stat_a - stat_b`` where both see the same resampled examples in every draw."""
    value = float(stat_a(np.arange(n))) - float(stat_b(np.arange(n)))
    if n < 2:
        return Interval(value, value, value, n, confidence)
    samples = [float(stat_a(i)) - float(stat_b(i)) for i in _indices(n, resamples, seed)]
    return _interval(value, samples, n, confidence)
