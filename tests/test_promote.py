"""`anima promote`: the champion moves to the candidate only when it wins (or force / by hand), the old
champion keeps `previous`, and every decision is an MLflow run. A separate registered model whose versions
are the session's real nano models, so alias changes here touch no other test."""

from __future__ import annotations

import pytest

from tests.helpers.registry import nano_registry  # noqa: F401  (session fixture)

pytestmark = pytest.mark.slow
NAME = "anima-promo"


@pytest.fixture(scope="module")
def promo(nano_registry):
    from mlflow import MlflowClient

    from anima.model.resolve import resolve_model
    from anima.tracking.store import setup_mlflow

    reg = nano_registry
    cfg = reg.cfg("promote", f"registry.name={NAME}")
    setup_mlflow(cfg.tracking)
    client = MlflowClient()
    client.create_registered_model(NAME)
    for v in ("1", "2", "3"):
        path = resolve_model(f"models:/{reg.name}/{v}", cfg.tracking).path
        client.create_model_version(NAME, source=str(path), tags={"stage": "pretrain"})
    return reg


def _promote(reg, *extra):
    from anima.stages.promote import promote_stage

    return promote_stage(reg.cfg("promote", f"registry.name={NAME}", *extra))


def _aliases() -> dict[str, str]:
    from mlflow import MlflowClient

    return {a: str(v) for a, v in MlflowClient().get_registered_model(NAME).aliases.items()}


def _set(**kw):
    from mlflow import MlflowClient

    c = MlflowClient()
    for key, pairs in kw.items():
        for version, value in pairs.items():
            if key == "alias":
                c.set_registered_model_alias(NAME, value, version)
            else:
                c.set_model_version_tag(NAME, version, f"eval.{key}", str(value))


def _pair(cand: str, champ: str, diff: float, low: float, high: float, n: int = 50, data: str = "suite:x") -> None:
    """The paired result `anima eval model=<cand> compare=champion` stores on the candidate (set by hand here, as
    the eval.* tags above; tests/test_stage_eval.py checks that eval writes it)."""
    import json

    from mlflow import MlflowClient

    rec = {"diff": diff, "low": low, "high": high, "n": n, "confidence": 0.95, "data": data}
    MlflowClient().set_model_version_tag(NAME, cand, f"eval.vs.v{champ}.rouge_l", json.dumps(rec))


def test_rules_in_sequence(promo):
    import mlflow

    from anima.errors import AnimaError

    with pytest.raises(AnimaError, match="anima-promo has no @candidate to promote"):
        _promote(promo)
    # no champion yet: the candidate becomes champion
    _set(alias={"1": "candidate"})
    d = _promote(promo, "promote.metric=rouge_l", "promote.mode=max")
    assert d.decision == "no champion" and _aliases()["champion"] == "1" and "previous" not in _aliases()
    run = mlflow.get_run(d.run_id)
    assert run.data.params["decision"] == "no champion" and run.data.tags["anima.stage"] == "promote"
    # the candidate wins on the metric: champion moves, the old one is kept as previous
    _set(rouge_l={"1": 0.1, "2": 0.3}, alias={"2": "candidate"})
    _pair("2", "1", 0.2, 0.1, 0.3)  # a real win: the interval of the difference excludes zero
    d = _promote(promo, "promote.metric=rouge_l", "promote.mode=max")
    assert d.decision == "wins" and d.candidate_value == 0.3 and d.champion_value == 0.1
    assert (d.difference, d.ci_low, d.ci_high, d.n) == (0.2, 0.1, 0.3, 50)
    assert _aliases()["champion"] == "2" and _aliases()["previous"] == "1"
    run = mlflow.get_run(d.run_id)
    assert run.data.metrics["candidate/rouge_l"] == 0.3 and run.data.metrics["champion/rouge_l"] == 0.1
    assert run.data.params["decision.promoted"] == "True"
    # it loses: nothing moves, the decision is still recorded
    _set(rouge_l={"3": 0.2}, alias={"3": "candidate"})
    _pair("3", "2", -0.1, -0.2, 0.0)
    d = _promote(promo, "promote.metric=rouge_l", "promote.mode=max")
    assert d.decision == "loses" and _aliases()["champion"] == "2" and _aliases()["previous"] == "1"
    assert mlflow.get_run(d.run_id).data.params["decision"] == "loses"
    # better on the point value, but the interval of the difference straddles zero: noise, nothing moves
    _set(rouge_l={"3": 0.35})
    _pair("3", "2", 0.05, -0.02, 0.12)
    d = _promote(promo, "promote.metric=rouge_l", "promote.mode=max")
    assert d.decision == "within noise" and _aliases()["champion"] == "2"
    p = mlflow.get_run(d.run_id).data.params
    assert (p["decision.difference"], p["decision.ci_low"], p["decision.n"]) == ("0.05", "-0.02", "50")
    from mlflow import MlflowClient

    for v in ("2", "3"):  # recorded on both versions
        tags = MlflowClient().get_model_version(NAME, v).tags
        assert tags["promote.decision"] == "within noise" and tags["promote.run_id"] == d.run_id
    # a clear interval on too few examples is not enough either
    _pair("3", "2", 0.05, 0.01, 0.12, n=10)
    assert _promote(promo, "promote.metric=rouge_l", "promote.mode=max").decision == "too few examples"
    assert _promote(promo, "promote.metric=rouge_l", "promote.mode=max",
                    "promote.min_examples=5").decision == "wins"
    _set(alias={"2": "champion", "1": "previous"})  # undo that win for the rest of the sequence
    # evals on different sets are not comparable: one line
    MlflowClient().set_model_version_tag(NAME, "2", "eval.data", "suite:other")
    with pytest.raises(AnimaError, match="evaluated on different eval sets \\(suite:x vs suite:other\\)"):
        _promote(promo, "promote.metric=rouge_l", "promote.mode=max")
    MlflowClient().delete_model_version_tag(NAME, "2", "eval.data")
    # min_delta: a small win is not enough ...
    _pair("3", "2", 0.05, 0.01, 0.12)
    assert _promote(promo, "promote.metric=rouge_l", "promote.mode=max", "promote.min_delta=0.1").decision == "loses"
    # ... unless forced
    d = _promote(promo, "promote.metric=rouge_l", "promote.mode=max", "promote.min_delta=0.1", "force=true")
    assert d.decision == "forced" and _aliases()["champion"] == "3" and _aliases()["previous"] == "2"
    assert _promote(promo, "promote.metric=rouge_l").decision == "already champion"
    # by hand
    d = _promote(promo, "version=1", "alias=champion")
    assert d.decision == "manual" and _aliases()["champion"] == "1" and _aliases()["previous"] == "3"


def test_missing_metric_and_version_are_one_line(promo):
    from anima.errors import AnimaError, ModelError

    _set(alias={"1": "champion", "2": "candidate"})
    with pytest.raises(AnimaError, match="has no eval.bleu tag; run `anima eval"):
        _promote(promo, "promote.metric=bleu")
    with pytest.raises(ModelError, match="version=9: anima-promo has no such version"):
        _promote(promo, "version=9")


def test_perplexity_rule_measures_both_on_the_eval_data(promo):
    from mlflow import MlflowClient

    from anima.stages.promote import metric_value

    _set(alias={"1": "champion", "3": "candidate"})
    cfg = promo.cfg("promote", f"registry.name={NAME}")
    v1, v3 = (metric_value(cfg, NAME, v, "persona_ppl") for v in ("1", "3"))
    d = _promote(promo, "promote.metric=persona_ppl", "promote.min_examples=10")  # the test set holds 16
    # the first measurement is exact, the decision reads the ppl cache tag (6 significant digits)
    assert (d.candidate_value, d.champion_value) == (pytest.approx(v3, rel=1e-5), pytest.approx(v1, rel=1e-5))
    # the decision rests on the paired interval of the per-example NLL of both models on the same examples
    assert d.n and d.ci_low <= d.difference <= d.ci_high and d.difference == pytest.approx(v3 - v1, rel=1e-4)
    expected = "loses" if v3 >= v1 else ("wins" if d.ci_high < 0 else "within noise")
    assert d.decision == expected and _aliases()["champion"] == ("3" if expected == "wins" else "1")
    assert any(k.startswith("ppl.") for k in MlflowClient().get_model_version(NAME, "3").tags)  # cached
