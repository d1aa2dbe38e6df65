"""The locally implemented text metrics equal their reference implementations (rouge-score's rougeL with its
default tokenizer, sacreBLEU's CHRF) on the held-out persona conversations of the demo data, to 1e-6; and
every metric's bootstrap statistic on all examples equals the point value the metric module reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import compose_cfg, require_module


@pytest.fixture(scope="module")
def pairs(raw_dir: Path, tmp_path_factory) -> list[tuple[str, str]]:
    """(prediction, reference) pairs from the held-out persona split: each assistant reply is the reference;
    the predictions are another conversation's reply and the user's own message (realistic text, with
    punctuation, case and contractions on both sides)."""
    from anima.config.stage_schemas import DataStageConfig
    from anima.config.typed import typed
    from anima.data.dataset import ensure_dataset
    from anima.evaluation.evalsets import SPLIT_OF
    from tests.helpers import paths_under

    root = tmp_path_factory.mktemp("agree")
    spec = typed(compose_cfg("data", ["data=chat_mix"], raw_dir), DataStageConfig)
    held_out = ensure_dataset(spec.data, paths_under(root, raw_dir)).split(SPLIT_OF["persona"])
    assert len(held_out) >= 10
    turns = []
    for ex in held_out:
        msgs = ex["messages"]
        for user, reply in zip(msgs, msgs[1:]):
            if user["role"] == "user" and reply["role"] == "assistant":
                turns.append((user["content"], reply["content"]))
    replies = [r for _, r in turns]
    out = [(replies[(i + 1) % len(replies)], r) for i, r in enumerate(replies)]
    return out + [(u, r) for u, r in turns]


def test_rouge_l_equals_rouge_score(pairs):
    rouge_scorer = require_module("rouge_score.rouge_scorer")
    from anima.evaluation.generation_metrics import load_metric

    scorer = rouge_scorer.RougeScorer(["rougeL"])  # default: use_stemmer=False, default tokenizer
    preds, refs = [p for p, _ in pairs], [r for _, r in pairs]
    ref_f = [scorer.score(r, p)["rougeL"].fmeasure for p, r in pairs]
    ours = load_metric("rouge_l").compute(predictions=preds, references=refs)["rouge_l"]
    assert abs(ours - sum(ref_f) / len(ref_f)) < 1e-6
    rouge = __import__("anima.evaluation.generation_metrics", fromlist=["x"]).metric_module("rouge_l")
    worst = max(abs(rouge.rouge_l_pair(p, r)[2] - f) for (p, r), f in zip(pairs, ref_f))
    assert worst < 1e-6, worst
    # the case from the issue: punctuation no longer sticks to words
    assert load_metric("rouge_l").compute(predictions=["Hello there, friend!"],
                                          references=["hello there friend"])["rouge_l"] == pytest.approx(1.0)


def test_chrf_equals_sacrebleu(pairs):
    sacrebleu = require_module("sacrebleu")
    from anima.evaluation.generation_metrics import load_metric

    preds, refs = [p for p, _ in pairs], [r for _, r in pairs]
    chrf = sacrebleu.metrics.CHRF()  # char_order=6, word_order=0, beta=2
    corpus = chrf.corpus_score(preds, [refs]).score
    assert abs(load_metric("chrf").compute(predictions=preds, references=refs)["chrf"] - corpus) < 1e-6
    for p, r in pairs[:50]:  # sentence level (the per-example table)
        ours = load_metric("chrf").compute(predictions=[p], references=[r])["chrf"]
        assert abs(ours - chrf.sentence_score(p, [r]).score) < 1e-6, (p, r)


def test_bootstrap_statistics_equal_the_point_values(pairs):
    from anima.evaluation.example_stats import generation_stats
    from anima.evaluation.generation_metrics import compute_generation_metrics

    preds, refs = [p for p, _ in pairs][:60], [r for _, r in pairs][:60]
    point = compute_generation_metrics(preds, refs, ["bot", "computer"])
    stats = generation_stats(preds, refs, ["bot", "computer"])
    assert set(stats) == set(point)
    for k, stat in stats.items():
        assert abs(stat(np.arange(len(preds))) - point[k]) < 1e-9, k
