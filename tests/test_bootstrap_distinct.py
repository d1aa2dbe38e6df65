"""distinct-n bootstrap intervals: each resampled copy of a reply counts as an independent reply, so the interval
contains the point value and covers the population value near the nominal rate (simulated, seeded)."""

from __future__ import annotations

import numpy as np
import pytest

from anima.evaluation.bootstrap import bootstrap, paired_bootstrap
from anima.evaluation.example_stats import generation_stats


def _population(seed: int = 1, size: int = 3000, vocab: int = 400) -> list[str]:
    """Replies of 3-14 Zipf-distributed words: common words repeat across replies, rare ones are private."""
    rng = np.random.default_rng(seed)
    w = 1 / np.arange(1, vocab + 1) ** 1.1
    w /= w.sum()
    return [" ".join(f"w{t}" for t in rng.choice(vocab, size=rng.integers(3, 15), p=w)) for _ in range(size)]


def _stat(replies: list[str], key: str):
    """The statistic the eval uses (generation_stats), built without the reference metrics (fast)."""
    from anima.evaluation.example_stats import _distinct
    from anima.evaluation.generation_metrics import metric_module

    order = int(key.rsplit("_", 1)[1])
    return _distinct([metric_module("distinct").ngrams(r.lower().split(), order) for r in replies])


@pytest.mark.parametrize("key", ["distinct_1", "distinct_2"])
def test_interval_contains_point_and_covers_population_value(key):
    from anima.evaluation.generation_metrics import metric_module

    distinct_n, order = metric_module("distinct").distinct_n, int(key[-1])
    pop, rng, n = _population(), np.random.default_rng(7), 30
    samples = [[pop[j] for j in rng.choice(len(pop), n, replace=False)] for _ in range(1200)]
    # the estimand: distinct-n of an eval set of n replies drawn from the population (a type/token ratio depends
    # on corpus size, so that is what a size-n eval set estimates)
    truth = float(np.mean([distinct_n(s, order) for s in samples[200:]]))
    covered = 0
    for s, sample in enumerate(samples[:200]):
        iv = bootstrap(_stat(sample, key), n, resamples=200, seed=s)
        assert iv.low <= iv.value <= iv.high, (s, iv)
        covered += iv.low <= truth <= iv.high
    assert covered / 200 >= 0.85, covered / 200


def test_eval_statistic_is_this_one():
    replies = ["Alpha beta", "gamma delta", "alpha epsilon"]
    idx = np.array([0, 0, 2])
    assert generation_stats(replies, [""] * 3)["distinct_1"](idx) == _stat(replies, "distinct_1")(idx)


def test_identical_copies_are_not_counted_as_repeats():
    stat = _stat(["alpha beta", "gamma delta", "alpha epsilon"], "distinct_1")
    assert stat(np.arange(3)) == pytest.approx(5 / 6)
    # reply 1 drawn twice: its private words count once per copy (a fresh reply would bring its own words);
    # "alpha" is shared by replies 0 and 2 and still counts once
    assert stat(np.array([0, 0, 2])) == pytest.approx(4 / 6)  # alpha, beta, beta', epsilon
    assert stat(np.array([1, 1, 1])) == pytest.approx(1.0)


def test_paired_distinct_difference_uses_the_same_statistic():
    pop, rng, n = _population(seed=3), np.random.default_rng(11), 40
    a = [pop[j] for j in rng.choice(len(pop), n, replace=False)]
    iv = paired_bootstrap(_stat(a, "distinct_1"), _stat(list(a), "distinct_1"), n, resamples=200)
    assert (iv.value, iv.low, iv.high) == (0.0, 0.0, 0.0)  # identical models: no spurious difference
    b = [" ".join(r.split()[: max(1, len(r.split()) // 2)] * 2) for r in a]  # every reply repeats itself
    iv = paired_bootstrap(_stat(a, "distinct_1"), _stat(b, "distinct_1"), n, resamples=200)
    assert iv.low <= iv.value <= iv.high and iv.low > 0
