"""The evidence `anima promote` decides on: the candidate minus the champion on the same examples, with a
paired-bootstrap interval. Perplexities are measured here on the eval sets (per example, both models); any other
metric is the paired result `anima eval model=<candidate> compare=champion` stored on the candidate version."""

from __future__ import annotations

from typing import Any

from anima.errors import AnimaError
from anima.evaluation.bootstrap import Interval, paired_bootstrap
from anima.tracking.registry import model_uri


def _measured_ppl(spec: Any, name: str, cand: str, champion: str, metric: str) -> tuple[Interval, float, float]:
    from mlflow import MlflowClient

    from anima.evaluation.candidates import candidate_from_version, store_score
    from anima.evaluation.evalsets import load_eval_sets
    from anima.evaluation.example_stats import perplexity_stat
    from anima.evaluation.perplexity import measure_model_dir

    set_name = metric[: -len("_ppl")]
    es = load_eval_sets(spec, [set_name])[set_name]
    stats, values = [], []
    for v in (cand, champion):
        c = candidate_from_version(MlflowClient().get_model_version(name, v))
        p = measure_model_dir(c.local_path(spec.tracking), {set_name: es}, spec.eval.batch_size)[set_name]
        store_score(c, es.tag, p.ppl)
        stats.append(perplexity_stat([e[0] for e in p.per_example], [e[1] for e in p.per_example]))
        values.append((p.ppl, len(p.per_example)))
    if values[0][1] != values[1][1]:
        raise AnimaError(f"promote.metric={metric}: v{cand} scores {values[0][1]} examples of {set_name} but "
                         f"v{champion} {values[1][1]} (different chat templates); no paired comparison")
    iv = paired_bootstrap(stats[0], stats[1], values[0][1], confidence=spec.promote.confidence, seed=spec.seed)
    return iv, values[0][0], values[1][0]


def _recorded(spec: Any, name: str, cand: str, champion: str, metric: str) -> tuple[Interval, float, float]:
    from mlflow import MlflowClient

    from anima.evaluation.comparison import pair_tag, read_pair, require_same_data

    client = MlflowClient()
    c_tags = client.get_model_version(name, cand).tags or {}
    h_tags = client.get_model_version(name, champion).tags or {}
    uri = model_uri(name, cand)
    if f"eval.{metric}" not in c_tags:
        raise AnimaError(f"promote.metric={metric}: {uri} has no eval.{metric} tag; run "
                         f"`anima eval model={uri} compare=champion` first, or use val_ppl / persona_ppl")
    rec = read_pair(c_tags, champion, metric, uri)
    if rec is None:
        raise AnimaError(f"promote.metric={metric}: {uri} has no paired result against v{champion} "
                         f"({pair_tag(champion, metric)}); run `anima eval model={uri} compare=champion` first")
    require_same_data(rec.get("data"), h_tags.get("eval.data"), f"v{cand} vs v{champion}")
    if abs(float(rec["confidence"]) - spec.promote.confidence) > 1e-9:
        raise AnimaError(f"promote.confidence={spec.promote.confidence:g}: the paired result of {uri} is at "
                         f"{rec['confidence']:g}; run `anima eval ... eval.confidence={spec.promote.confidence:g}`")
    iv = Interval(float(rec["diff"]), float(rec["low"]), float(rec["high"]), int(rec["n"]), float(rec["confidence"]))
    return iv, float(c_tags[f"eval.{metric}"]), float(h_tags.get(f"eval.{metric}", "nan"))


def paired_evidence(spec: Any, name: str, cand: str, champion: str) -> tuple[Interval, float, float]:
    """(candidate minus champion with its interval, candidate value, champion value) on promote.metric."""
    metric = spec.promote.metric
    if metric.endswith("_ppl"):
        return _measured_ppl(spec, name, cand, champion, metric)
    return _recorded(spec, name, cand, champion, metric)


def verdict(iv: Interval, mode: str, min_delta: float, min_examples: int) -> str:
    """wins only on a real win: enough examples, better by more than min_delta, and the interval of the
    difference clear of the zero line (shifted by min_delta); else too few examples / loses / within noise."""
    if iv.n < min_examples:
        return "too few examples"
    sign = -1.0 if mode == "min" else 1.0
    if not sign * iv.value > min_delta:
        return "loses"
    bound = -iv.high if mode == "min" else iv.low
    return "wins" if bound > min_delta else "within noise"
