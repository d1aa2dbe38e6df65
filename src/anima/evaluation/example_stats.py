"""Every eval metric as a statistic of a set of example indices, for the bootstrap (evaluation/bootstrap.py).

``stat(np.arange(n))`` equals the point value the metric module reports on all examples; a resample passes
repeated indices. Per-example pieces come from the metric scripts' own helpers (generation_metrics.metric_module),
so the two cannot drift apart. Perplexity resamples examples and recomputes exp(sum NLL / sum tokens), i.e. it is
weighted by each example's scored tokens.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from anima.evaluation.bootstrap import Stat


def _mean(values: np.ndarray) -> Stat:
    return lambda idx: float(values[idx].mean()) if len(idx) else 0.0


def _chrf(stats: np.ndarray, module) -> Stat:
    return lambda idx: 100.0 * module.chrf_from_statistics(stats[idx].sum(axis=0).tolist())[2]


def _distinct(grams: list[list[tuple]]) -> Stat:
    """distinct-n of a resample, counting each resampled copy of a reply as an independent reply.

    Plain resampling of the pooled n-grams is biased for a type/token ratio: a reply drawn twice adds its
    n-grams to the total twice but its types only once, so every resample looks less diverse than the data
    (the percentile interval then misses the point value). In a fresh sample those two draws would be two
    different replies, which share common n-grams with the rest of the corpus but not their private ones. So a
    type found in two or more *different* resampled replies counts once, as usual, and a type found in only one
    reply counts once per copy of that reply (the copies never duplicate each other). With every reply drawn once
    this is exactly distinct_n; a reply's private types then contribute exactly their expected count to every
    resample, so the interval is centred on the data (coverage checked by simulation in tests/test_bootstrap_distinct.py).
    """
    vocab: dict[tuple, int] = {}
    pairs = [(vocab.setdefault(g, len(vocab)), i) for i, gs in enumerate(grams) for g in set(gs)]
    types = np.array([t for t, _ in pairs], dtype=np.int64)
    owner = np.array([i for _, i in pairs], dtype=np.int64)
    sizes = np.array([len(gs) for gs in grams], dtype=float)

    def stat(idx: np.ndarray) -> float:
        copies = np.bincount(idx, minlength=len(grams)).astype(float) if len(idx) else np.zeros(len(grams))
        total = float(copies @ sizes)
        if not total:
            return 0.0
        present = np.bincount(types, weights=(copies > 0)[owner], minlength=len(vocab))
        drawn = np.bincount(types, weights=copies[owner], minlength=len(vocab))
        unique = np.count_nonzero(present >= 2) + drawn[present == 1].sum()
        return float(unique) / total
    return stat


def masked_mean(rates: Sequence[float | None]) -> Stat:
    """Mean over the resampled examples that have a value (None: not applicable, e.g. a judge's skip)."""
    vals = np.array([r if r is not None else 0.0 for r in rates])
    mask = np.array([r is not None for r in rates])

    def stat(idx: np.ndarray) -> float:
        m = mask[idx]
        return float(vals[idx][m].mean()) if m.any() else 0.0
    return stat


def generation_stats(predictions: Sequence[str], references: Sequence[str], persona_keywords: Sequence[str] = (),
                     *, repetition_n: int = 3) -> dict[str, Stat]:
    """One statistic per key of compute_generation_metrics (rouge_l, chrf, distinct_1/2, repetition_<n>, ...)."""
    from anima.evaluation.generation_metrics import metric_module

    rouge, chrf, distinct = metric_module("rouge_l"), metric_module("chrf"), metric_module("distinct")
    rep, kw = metric_module("repetition"), metric_module("persona_keywords")
    preds, refs = list(predictions), list(references)
    pattern = kw.keyword_pattern(list(persona_keywords))
    out: dict[str, Stat] = {
        "rouge_l": _mean(np.array([rouge.rouge_l_pair(p, r)[2] for p, r in zip(preds, refs)])),
        "chrf": _chrf(np.array([chrf.chrf_statistics([p], [r]) for p, r in zip(preds, refs)]).reshape(
            len(preds), -1, 3), chrf),
    }
    for n in (1, 2):
        out[f"distinct_{n}"] = _distinct([distinct.ngrams(p.lower().split(), n) for p in preds])
    out[f"repetition_{repetition_n}"] = masked_mean([rep.repetition_rate(p, repetition_n) for p in preds])
    out["reply_length"] = _mean(np.array([len(p.split()) for p in preds], dtype=float))
    hits = [bool(pattern and pattern.search(p)) for p in preds]
    out["persona_keyword_rate"] = _mean(np.array(hits, dtype=float))
    return out


def perplexity_stat(nll: Sequence[float], tokens: Sequence[int]) -> Stat:
    """exp(sum of the resampled examples' NLL / sum of their scored tokens)."""
    nll_a, tok_a = np.asarray(nll, dtype=float), np.asarray(tokens, dtype=float)

    def stat(idx: np.ndarray) -> float:
        count = tok_a[idx].sum()
        loss = nll_a[idx].sum() / count if count else math.inf
        return math.exp(loss) if loss < 700 else math.inf
    return stat
