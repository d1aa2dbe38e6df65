"""anima promote: move the `champion` alias to the candidate when it wins on promote.metric (or force=true, or by
hand with version=N); the replaced champion keeps the alias `previous`. Every decision, promoted or not, is an
MLflow run whose params say what was compared and why."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from omegaconf import DictConfig

from anima.errors import AnimaError, ModelError
from anima.tracking.registry import model_uri, tag_version

PROMOTED = ("manual", "forced", "no champion", "wins")


@dataclass
class Decision:
    decision: str  # manual | forced | no champion | wins | loses | already champion
    candidate: str  # version number
    champion: str | None  # the version holding the alias before
    metric: str
    candidate_value: float | None = None
    champion_value: float | None = None
    run_id: str | None = None

    @property
    def promoted(self) -> bool:
        return self.decision in PROMOTED


def metric_value(cfg: DictConfig, name: str, version: str, metric: str) -> float:
    """`<set>_ppl` is measured on the eval data (cached per version and data); anything else is the version's
    `eval.<metric>` tag written by `anima eval`."""
    from mlflow import MlflowClient

    if metric.endswith("_ppl"):
        from anima.evaluation.candidates import candidate_from_version, score_candidates
        from anima.evaluation.evalsets import load_eval_sets

        set_name = metric[: -len("_ppl")]
        sets = load_eval_sets(cfg, [set_name])
        cand = candidate_from_version(MlflowClient().get_model_version(name, version))
        score_candidates([cand], sets, cfg.tracking, batch_size=int(cfg.eval.batch_size), cache=bool(cfg.eval.cache))
        return cand.scores[set_name]
    tags = MlflowClient().get_model_version(name, version).tags or {}
    value = tags.get(f"eval.{metric}")
    if value is None:
        uri = model_uri(name, version)
        raise AnimaError(f"promote.metric={metric}: {uri} has no eval.{metric} tag; run "
                         f"`anima eval model={uri}` first, or use val_ppl / persona_ppl")
    return float(value)


def decide(cfg: DictConfig) -> Decision:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from anima.tracking.registry import list_aliases, require_registered

    name, alias, rule = str(cfg.registry.name), str(cfg.alias), cfg.promote
    require_registered(name)
    aliases = list_aliases(name)
    champion = aliases.get(alias)
    champion = str(champion) if champion is not None else None
    if cfg.get("version") is not None:
        cand = str(cfg.version)
        try:
            MlflowClient().get_model_version(name, cand)
        except MlflowException:
            raise ModelError(f"version={cand}: {name} has no such version") from None
        return Decision("manual" if cand != champion else "already champion", cand, champion, str(rule.metric))
    cand = aliases.get(str(rule.candidate))
    if cand is None:
        known = ", ".join(f"@{a}→v{v}" for a, v in sorted(aliases.items())) or "none"
        raise AnimaError(f"{name} has no @{rule.candidate} to promote (aliases: {known}); run `anima merge`, or "
                         f"give version=N")
    cand = str(cand)
    if champion is None:
        return Decision("no champion", cand, None, str(rule.metric))
    if cand == champion:
        return Decision("already champion", cand, champion, str(rule.metric))
    c_val = metric_value(cfg, name, cand, str(rule.metric))
    h_val = metric_value(cfg, name, champion, str(rule.metric))
    if bool(cfg.force):
        return Decision("forced", cand, champion, str(rule.metric), c_val, h_val)
    delta = float(rule.min_delta)
    wins = (c_val < h_val - delta) if str(rule.mode) == "min" else (c_val > h_val + delta)
    if math.isnan(c_val):
        wins = False
    return Decision("wins" if wins else "loses", cand, champion, str(rule.metric), c_val, h_val)


def run(cfg: DictConfig) -> Decision:
    return promote_stage(cfg)


def promote_stage(cfg: DictConfig, overrides: Sequence[str] | None = None) -> Decision:
    import mlflow
    from mlflow import MlflowClient
    from rich.console import Console

    from anima.tracking.run import stage_run
    from anima.tracking.store import setup_mlflow

    setup_mlflow(cfg.tracking)
    d = decide(cfg)
    name, alias = str(cfg.registry.name), str(cfg.alias)
    previous = cfg.promote.get("previous") if alias == "champion" else None
    with stage_run(cfg, overrides=overrides, extra_tags={"anima.promote.decision": d.decision}) as active:
        d.run_id = active.info.run_id
        mlflow.log_params({"decision": d.decision, "decision.candidate_version": d.candidate,
                           "decision.champion_version": d.champion or "none",
                           "decision.candidate_value": d.candidate_value, "decision.champion_value": d.champion_value,
                           "decision.promoted": d.promoted})
        for k, v in (("candidate", d.candidate_value), ("champion", d.champion_value)):
            if v is not None and math.isfinite(v):
                mlflow.log_metric(f"{k}/{d.metric}", v)
        if d.promoted:
            client = MlflowClient()
            if previous and d.champion and d.champion != d.candidate:
                client.set_registered_model_alias(name, str(previous), d.champion)
            client.set_registered_model_alias(name, alias, d.candidate)
            tag_version(name, d.candidate, {f"promoted.{alias}": d.run_id})
    _print(Console(), d, name, alias, previous)
    return d


def _print(console, d: Decision, name: str, alias: str, previous: str | None) -> None:
    vals, uri = "", model_uri(name, d.candidate)
    if d.candidate_value is not None:
        vals = f" ({d.metric}: v{d.candidate} {d.candidate_value:.4g} vs v{d.champion} {d.champion_value:.4g})"
    if d.promoted:
        moved = f"; v{d.champion} is now @{previous}" if previous and d.champion and d.champion != d.candidate else ""
        console.print(f"[bold green]✓ promoted[/] {uri} to @{alias} ({d.decision}){vals}{moved}")
    else:
        console.print(f"[yellow]not promoted[/]: {uri} ({d.decision}){vals}; "
                      f"@{alias} stays on v{d.champion} (force=true to override)")
