"""One trial: compose the stage's config with the trial's suggestions, validate it, train in process as a
child MLflow run of the sweep's run, report the metric at every validation, return the objective.

A trial that raises or ends with a non-finite objective is recorded as failed (its run FAILED, tagged with
the error) and the study goes on; Ctrl-C marks it interrupted (rerun on resume) and stops the sweep."""

from __future__ import annotations

import contextlib
import gc
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import optuna

from anima.config.sweep import SweepConfig
from anima.errors import AnimaError, ConfigError
from anima.sweep.space import Param, to_overrides
from anima.sweep.study import INTERRUPTED, retry_of
from anima.sweep.tags import SWEEP_RUN, TAG_RETRY_OF, TAG_STATE, TAG_STUDY, TAG_TRIAL
from anima.train.result import TrainResult

INTERRUPTED_MSG = "interrupted (Ctrl-C)"
PARENT_TAG = "mlflow.parentRunId"
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


class MetricMissing(ConfigError):
    """The objective metric is not logged by the stage: every trial would fail the same way, so stop."""


@dataclass
class SweepContext:
    sweep: SweepConfig  # the sweep's `sweep` group, typed
    seed: int  # the sweep's seed: a trial that sets none reproduces with it
    study_name: str
    space: Sequence[Param]
    propagated: list[str]  # paths/tracking/device/seed of the sweep, so trials log into the same store
    out_dir: Path
    console: Any = None
    pins: list[str] = field(default_factory=list)  # init_from/teacher aliases resolved once per study
    run_id: str | None = None  # the sweep's own run (this worker's; liveness judges the worker by it)
    study_run_id: str | None = None  # the study's one parent run (the first worker's): trials are its children
    trial_lines: list[str] = field(default_factory=list)

    def preset_overrides(self, values: dict[str, Any]) -> list[str]:
        """What reproduces a trial on its own: the base overrides and the suggested values (+ the seed)."""
        base = base_overrides(self.sweep)
        seed = [] if any(o.split("=")[0].lstrip("+~") == "seed" for o in base) or "seed" in values \
            else [f"seed={self.seed}"]
        return [*seed, *base, *self.pins, *to_overrides(values)]

    def trial_overrides(self, number: int, values: dict[str, Any]) -> list[str]:
        return [*self.propagated, *self.preset_overrides(values),
                *to_overrides({"run_name": trial_run_name(self.study_name, number)}), "registry.register=false"]


def trial_run_name(study: str, number: int) -> str:
    """`<study>-t<N>`: the MLflow run name of trial N (its training run, or the FAILED run of a trial that
    failed before training)."""
    return f"{study}-t{number}"


def base_overrides(sweep: SweepConfig) -> list[str]:
    """`sweep.overrides` then `sweep.set` (nested keys flattened): what every trial of the study shares."""
    from anima.tracking.run import flatten

    return [*sweep.overrides, *to_overrides(flatten(sweep.set))]


def _tag(run_id: str | None, tags: dict[str, Any], status: str | None = None) -> None:
    if not run_id:
        return
    from mlflow import MlflowClient

    client = MlflowClient()
    for k, v in tags.items():
        client.set_tag(run_id, k, str(v))
    if status:
        client.set_terminated(run_id, status)


def _record_failed_run(ctx: SweepContext, trial: optuna.Trial, error: str) -> str:
    """A trial that failed before training started still gets its child run, FAILED, naming the error."""
    import mlflow

    with mlflow.start_run(run_name=trial_run_name(ctx.study_name, trial.number), nested=True,
                          tags={"anima.stage": ctx.sweep.stage, "anima.error": error[:5000]}) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in trial.params.items()})
    return run.info.run_id


class TrainFn(Protocol):
    """The training stage a sweep optimises (`anima.stages.train.train`), passed in by the sweep stage."""

    def __call__(self, cfg: Any, callbacks: Sequence = (), overrides: Sequence[str] | None = None,
                 nested: bool = False) -> TrainResult: ...


def _trial_tags(ctx: SweepContext, trial: optuna.Trial) -> dict[str, Any]:
    """Tags every run of the trial carries: study, trial number, the try it reruns, and -- for a worker that
    joined a study another worker started -- the study's one parent run as its parent."""
    tags: dict[str, Any] = {TAG_STUDY: ctx.study_name, TAG_TRIAL: trial.number}
    if ctx.study_run_id and ctx.study_run_id != ctx.run_id:
        tags[PARENT_TAG] = ctx.study_run_id
    retried = retry_of(trial)
    if retried is not None:
        tags[TAG_RETRY_OF] = retried
    return tags


def make_objective(ctx: SweepContext, train: TrainFn):
    """The Optuna objective: one trial trains `ctx.sweep.stage` with `train` and returns its `sweep.metric`."""
    from anima.config.compose import compose, one_line
    from anima.tracking.context import run_context
    from anima.sweep.pruning import StepPruningCallback

    sweep = ctx.sweep
    metric = sweep.metric

    def objective(trial: optuna.Trial) -> float:
        values = {p.key: p.suggest(trial) for p in ctx.space}
        overrides = ctx.trial_overrides(trial.number, values)
        trial.set_user_attr("overrides", ctx.preset_overrides(values))
        if ctx.run_id:
            trial.set_user_attr(SWEEP_RUN, ctx.run_id)  # if this worker is killed, the next sweep fails the trial
        base_tags = _trial_tags(ctx, trial)

        def on_start(run_id: str) -> None:
            trial.set_user_attr("run_id", run_id)  # known before the end: a killed trial's run can be ended
            _tag(run_id, {**base_tags, TAG_STATE: "RUNNING"})

        cb = StepPruningCallback(trial, metric, on_start=on_start)
        start = time.perf_counter()
        state, value, error = "FAIL", float("nan"), None
        try:
            cfg = compose(sweep.stage, overrides)
            trial.set_user_attr("registered_name", sweep.register_name or cfg.registry.name)
            with run_context(output_dir=ctx.out_dir / f"trial-{trial.number:03d}", overrides=overrides):
                result = train(cfg, callbacks=[cb], overrides=overrides, nested=True)
            trial.set_user_attr("run_id", result.run_id)
            if metric not in result.metrics:
                logged = ", ".join(sorted(k for k in result.metrics if "/" in k))
                raise MetricMissing(f"sweep.metric={metric} is not logged by {sweep.stage}; it logs: {logged}")
            value = float(result.metrics[metric])
            if not math.isfinite(value):
                raise AnimaError(f"{metric}={value}")
            state = "COMPLETE"
            return value
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        except KeyboardInterrupt:
            trial.set_user_attr(INTERRUPTED, True)
            error = INTERRUPTED_MSG
            raise
        except MetricMissing:
            raise
        except Exception as e:
            error = str(e).splitlines()[0] if isinstance(e, AnimaError) else one_line(e)
            trial.set_user_attr("error", error[:1000])
            return float("nan")  # Optuna records the trial as failed and the study goes on
        finally:
            seconds = time.perf_counter() - start
            trial.set_user_attr("steps", cb.steps)
            trial.set_user_attr("seconds", round(seconds, 2))
            run_id = cb.run_id
            if run_id is None and state == "FAIL":
                with contextlib.suppress(Exception):
                    run_id = _record_failed_run(ctx, trial, error or "failed")
            if run_id:
                trial.set_user_attr("run_id", run_id)
                tags = {**base_tags, TAG_STATE: state, **({"anima.error": error[:5000]} if error else {})}
                with contextlib.suppress(Exception):
                    status = "KILLED" if error == INTERRUPTED_MSG else RUN_STATUS[state]
                    _tag(run_id, tags, status=status if state != "COMPLETE" else None)
            shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
            what = f"{metric}={value:.4f}" if state == "COMPLETE" else \
                f"at step {cb.pruned_at}" if state == "PRUNED" else (error or "failed")
            line = f"trial {trial.number:>3} {state:<8} {what}  ({shown})  {cb.steps} steps, {seconds:.1f}s"
            ctx.trial_lines.append(line)
            if ctx.console is not None:
                style = {"COMPLETE": "green", "PRUNED": "yellow"}.get(state, "red")
                ctx.console.print(f"[{style}]{line}[/]", highlight=False)
            gc.collect()

    return objective
