"""anima promote: move the `champion` alias to the candidate when it wins on promote.metric (or force=true, or by
hand with version=N); the replaced champion keeps the alias `previous`. Every decision, promoted or not, is an
MLflow run whose params say what was compared and why."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

from omegaconf import DictConfig

from anima.config.promote import PromoteStageConfig
from anima.config.typed import typed
from anima.errors import AnimaError, ModelError
from anima.tracking.registry import model_uri, tag_version

PROMOTED = ("manual", "forced", "no champion", "wins")


@dataclass
class Decision:
    decision: str  # manual | forced | no champion | wins | loses | within noise | too few examples | already champion
    candidate: str  # version number
    champion: str | None  # the version holding the alias before
    metric: str
    candidate_value: float | None = None
    champion_value: float | None = None
    run_id: str | None = None
    difference: float | None = None  # candidate minus champion on the same examples
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    confidence: float | None = None

    @property
    def promoted(self) -> bool:
        return self.decision in PROMOTED


def metric_value(spec: PromoteStageConfig, name: str, version: str, metric: str) -> float:
    """`<set>_ppl` is measured on the eval data (cached per version and data); anything else is the version's
    `eval.<metric>` tag written by `anima eval`."""
    from mlflow import MlflowClient

    if metric.endswith("_ppl"):
        from anima.evaluation.candidates import candidate_from_version, score_candidates
        from anima.evaluation.evalsets import load_eval_sets

        set_name = metric[: -len("_ppl")]
        sets = load_eval_sets(spec, [set_name])
        cand = candidate_from_version(MlflowClient().get_model_version(name, version))
        score_candidates([cand], sets, spec.tracking, batch_size=spec.eval.batch_size, cache=spec.eval.cache)
        return cand.scores[set_name]
    tags = MlflowClient().get_model_version(name, version).tags or {}
    value = tags.get(f"eval.{metric}")
    if value is None:
        uri = model_uri(name, version)
        raise AnimaError(f"promote.metric={metric}: {uri} has no eval.{metric} tag; run "
                         f"`anima eval model={uri}` first, or use val_ppl / persona_ppl")
    return float(value)


def decide(spec: PromoteStageConfig) -> Decision:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from anima.tracking.registry import list_aliases, require_registered

    name, alias, rule = spec.registry.name, spec.alias, spec.promote
    require_registered(name)
    aliases = list_aliases(name)
    champion = aliases.get(alias)
    champion = str(champion) if champion is not None else None
    if spec.version is not None:
        cand = str(spec.version)
        try:
            MlflowClient().get_model_version(name, cand)
        except MlflowException:
            raise ModelError(f"version={cand}: {name} has no such version") from None
        return Decision("manual" if cand != champion else "already champion", cand, champion, rule.metric)
    cand = aliases.get(rule.candidate)
    if cand is None:
        known = ", ".join(f"@{a}→v{v}" for a, v in sorted(aliases.items())) or "none"
        raise AnimaError(f"{name} has no @{rule.candidate} to promote (aliases: {known}); run `anima merge`, or "
                         f"give version=N")
    cand = str(cand)
    if champion is None:
        return Decision("no champion", cand, None, rule.metric)
    if cand == champion:
        return Decision("already champion", cand, champion, rule.metric)
    from anima.evaluation.promotion import paired_evidence, verdict

    iv, c_val, h_val = paired_evidence(spec, name, cand, champion)
    decision = "forced" if spec.force else verdict(iv, rule.mode, rule.min_delta, rule.min_examples)
    return Decision(decision, cand, champion, rule.metric, c_val, h_val, difference=iv.value, ci_low=iv.low,
                    ci_high=iv.high, n=iv.n, confidence=iv.confidence)


def run(cfg: DictConfig) -> Decision:
    return promote_stage(cfg)


def promote_stage(cfg: DictConfig, overrides: Sequence[str] | None = None) -> Decision:
    """Decide and move the alias; `cfg` is converted once to `PromoteStageConfig` and stays as the logged config."""
    import mlflow
    from mlflow import MlflowClient
    from rich.console import Console

    from anima.tracking.run import stage_run
    from anima.tracking.store import setup_mlflow

    spec = typed(cfg, PromoteStageConfig)
    setup_mlflow(spec.tracking)
    d = decide(spec)
    name, alias = spec.registry.name, spec.alias
    previous = spec.promote.previous if alias == "champion" else None
    with stage_run(cfg, overrides=overrides, extra_tags={"anima.promote.decision": d.decision}) as active:
        d.run_id = active.info.run_id
        mlflow.log_params({"decision": d.decision, "decision.candidate_version": d.candidate,
                           "decision.champion_version": d.champion or "none",
                           "decision.candidate_value": d.candidate_value, "decision.champion_value": d.champion_value,
                           "decision.promoted": d.promoted})
        if d.n is not None:
            mlflow.log_params({"decision.difference": d.difference, "decision.ci_low": d.ci_low,
                               "decision.ci_high": d.ci_high, "decision.n": d.n, "decision.confidence": d.confidence,
                               "decision.min_examples": spec.promote.min_examples})
        for k, v in (("candidate", d.candidate_value), ("champion", d.champion_value), ("difference", d.difference),
                     ("difference_ci_low", d.ci_low), ("difference_ci_high", d.ci_high)):
            if v is not None and math.isfinite(v):
                mlflow.log_metric(f"{k}/{d.metric}", v)
        _tag_both(name, d)
        if d.promoted:
            client = MlflowClient()
            if previous and d.champion and d.champion != d.candidate:
                client.set_registered_model_alias(name, previous, d.champion)
            client.set_registered_model_alias(name, alias, d.candidate)
            tag_version(name, d.candidate, {f"promoted.{alias}": d.run_id})
    _print(Console(), d, name, alias, previous)
    return d


def _tag_both(name: str, d: Decision) -> None:
    """The decision and its evidence as tags of both versions (the last promote decision that involved each)."""
    ev = {k: v for k, v in asdict(d).items() if v is not None and k not in ("run_id",)}
    tags = {f"promote.{k}": (f"{v:.6g}" if isinstance(v, float) else str(v)) for k, v in ev.items()}
    tags["promote.run_id"] = d.run_id or ""
    for v in {d.candidate, d.champion} - {None}:
        tag_version(name, v, tags)


def _print(console, d: Decision, name: str, alias: str, previous: str | None) -> None:
    vals, uri = "", model_uri(name, d.candidate)
    if d.candidate_value is not None:
        vals = f" ({d.metric}: v{d.candidate} {d.candidate_value:.4g} vs v{d.champion} {d.champion_value:.4g}"
        if d.n is not None:
            vals += (f"; difference {d.difference:+.4g}, {100 * d.confidence:g}% interval [{d.ci_low:.4g}, "
                     f"{d.ci_high:.4g}] on n={d.n}")
        vals += ")"
    if d.promoted:
        moved = f"; v{d.champion} is now @{previous}" if previous and d.champion and d.champion != d.candidate else ""
        console.print(f"[bold green]✓ promoted[/] {uri} to @{alias} ({d.decision}){vals}{moved}")
    else:
        console.print(f"[yellow]not promoted[/]: {uri} ({d.decision}){vals}; "
                      f"@{alias} stays on v{d.champion} (force=true to override)")
