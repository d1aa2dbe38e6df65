"""Generation metrics as local `evaluate` modules, checked against hand computations."""

from __future__ import annotations

import pytest

from anima.errors import DataError
from anima.evaluation.generation_metrics import (
    METRIC_NAMES,
    compute_generation_metrics,
    load_metric,
    metric_dir,
    score_each,
)


def test_every_module_loads_from_its_local_dir():
    import evaluate

    for name in METRIC_NAMES:
        module = evaluate.load(str(metric_dir(name)), keep_in_memory=True)
        assert isinstance(module, evaluate.EvaluationModule)
    assert load_metric("chrf") is load_metric("chrf")  # cached per process


def test_a_metric_script_on_the_shared_base_loads_from_any_dir(tmp_path):
    """evaluate copies a script into its module cache: the absolute import of the base must still work."""
    import evaluate

    script = tmp_path / "shouting" / "shouting.py"
    script.parent.mkdir()
    script.write_text(
        "from anima.evaluation.metric_base import ReplyMetric\n\n\n"
        "class Shouting(ReplyMetric):\n"
        '    DESCRIPTION = "share of all-caps replies"\n\n'
        "    def _compute(self, predictions):\n"
        "        return {'shouting': sum(p.isupper() for p in predictions) / len(predictions)}\n"
    )
    module = evaluate.load(str(script.parent), keep_in_memory=True)
    assert type(module).__name__ == "Shouting" and module.description == "share of all-caps replies"
    assert module.compute(predictions=["HEY", "hi"]) == {"shouting": 0.5}


def test_chrf_hand_worked():
    chrf = load_metric("chrf")
    # "ab" vs "abc": n=1 P=2/2 R=2/3; n=2 P=1/1 R=1/2; n>=3: no hypothesis n-grams -> not counted.
    # chrP = 1, chrR = 7/12, chrF2 = 5*P*R/(4P+R) = (35/12)/(55/12) = 7/11
    assert chrf.compute(predictions=["ab"], references=["abc"])["chrf"] == pytest.approx(100 * 7 / 11)
    # whitespace is dropped: "abc d" -> "abcd" vs "abd":
    # n=1: P=3/4 R=3/3; n=2: {ab,bc,cd} vs {ab,bd}: P=1/3 R=1/2; n=3: {abc,bcd} vs {abd}: P=0 R=0;
    # n=4: no reference 4-gram -> not counted. chrP=(3/4+1/3+0)/3=13/36, chrR=(1+1/2+0)/3=1/2,
    # chrF2 = 5*(13/36)*(1/2) / (4*13/36 + 1/2) = 13/28
    r = chrf.compute(predictions=["abc d"], references=["abd"])
    assert r["chrf"] == pytest.approx(100 * 13 / 28)
    assert r["chrf_precision"] == pytest.approx(100 * 13 / 36)
    assert r["chrf_recall"] == pytest.approx(50.0)
    # corpus level pools the counts: ["ab","x"] vs ["abc","x"]: n=1 P=3/3 R=3/4; n=2 P=1 R=1/2
    # chrP=1, chrR=5/8, chrF2 = 5*(5/8)/(4+5/8) = 25/37
    pooled = chrf.compute(predictions=["ab", "x"], references=["abc", "x"])["chrf"]
    assert pooled == pytest.approx(100 * 25 / 37)
    assert chrf.compute(predictions=["same text"], references=["same text"])["chrf"] == pytest.approx(100.0)


def test_rouge_l_known_pair():
    rouge = load_metric("rouge_l")
    # LCS("the cat sat on the mat", "the cat is on the mat") = "the cat on the mat" = 5 of 6 and 6
    r = rouge.compute(predictions=["The cat sat on the mat"], references=["the cat is on the MAT"])
    assert r["rouge_l"] == pytest.approx(5 / 6)
    # P = 2/2, R = 2/4 -> F = 2/3; second pair has nothing in common -> 0; mean 1/3
    r = rouge.compute(predictions=["a b", "x"], references=["a c d b", "y"])
    assert r["rouge_l"] == pytest.approx((2 / 3 + 0) / 2)
    assert r["rouge_l_precision"] == pytest.approx(0.5) and r["rouge_l_recall"] == pytest.approx(0.25)


def test_distinct_known_list():
    r = load_metric("distinct").compute(predictions=["a b a b", "A c"])
    # unigrams a b a b a c: 3 unique / 6; bigrams (a b)(b a)(a b)(a c): 3 unique / 4
    assert r == {"distinct_1": pytest.approx(0.5), "distinct_2": pytest.approx(0.75)}


def test_repetition_reply_length_persona_keywords():
    rep = load_metric("repetition").compute(predictions=["a b c a b c", "x y z", "hi"])
    # trigrams abc bca cab abc: 1 - 3/4 = 0.25; "x y z": 0; "hi" has no trigram -> not scored
    assert rep["repetition_3"] == pytest.approx(0.125) and rep["repetition_3_replies"] == 2
    assert load_metric("repetition").compute(predictions=["a a a a"], n=1)["repetition_1"] == pytest.approx(0.75)
    assert load_metric("reply_length").compute(predictions=["a b", "c d e f"])["reply_length"] == 3.0
    kw = load_metric("persona_keywords")
    r = kw.compute(predictions=["I am a bot.", "a robot here", "BOT!", "my name is Anima"], keywords=["bot"])
    assert r["persona_keyword_rate"] == pytest.approx(2 / 4)  # 'robot' does not count
    r = kw.compute(predictions=["my  name is Anima", "no"], keywords=["my name", "ANIMA"])
    assert r["persona_keyword_rate"] == pytest.approx(0.5)


def test_compute_generation_metrics_summary_and_per_reply():
    preds = ["the cat sat on the mat", "I am a bot bot bot bot"]
    refs = ["the cat is on the mat", "i am a robot"]
    out = compute_generation_metrics(preds, refs, ["bot"])
    assert set(out) == {"rouge_l", "chrf", "distinct_1", "distinct_2", "repetition_3", "reply_length",
                        "persona_keyword_rate"}
    assert out["reply_length"] == 6.5 and out["persona_keyword_rate"] == 0.5
    assert all(isinstance(v, float) for v in out.values())
    rows = score_each(preds, refs, ["bot"])
    assert rows[0]["rouge_l"] == pytest.approx(5 / 6) and rows[1]["persona_keyword_rate"] == 1.0
    assert compute_generation_metrics([], [], ["bot"])["chrf"] == 0.0
    with pytest.raises(DataError, match="2 predictions but 1 references"):
        compute_generation_metrics(preds, refs[:1])
