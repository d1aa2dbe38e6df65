"""`anima sweep`: an Optuna study over any config keys of pretrain/sft/distill; each trial is a child MLflow run
of the sweep's run. Several processes (or machines) given the same storage and study name share the study."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from anima.config.sweep import SweepStageConfig
from anima.config.typed import plain_dict, typed
from anima.errors import ConfigError
from anima.tracking.context import stage_output_dir


@dataclass
class SweepResult:
    study_name: str
    run_id: str
    counts: dict[str, int]
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_trial: int | None = None
    preset: Path | None = None
    registered: list[str] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    interrupted: bool = False


def propagated_overrides(spec: SweepStageConfig) -> list[str]:
    """The sweep's paths, tracking store, and device become every trial's: children log where the parent does."""
    from anima.sweep.objective import base_overrides
    from anima.sweep.space import to_overrides

    groups: dict[str, Any] = {"paths": spec.paths, "tracking": spec.tracking}
    if not any(o.lstrip("+~").startswith("device") for o in base_overrides(spec.sweep)):
        groups["device"] = spec.device
    out: dict[str, Any] = {}
    for g, group in groups.items():
        for k, v in plain_dict(group).items():
            if not isinstance(v, (dict, list)):
                out[f"{g}.{k}"] = v
    return to_overrides(out)


PINNED_KEYS = ("init_from", "teacher")


def pin_models(tracking: Any, study: Any, base: list[str]) -> list[str]:
    """Resolve `init_from`/`teacher` aliases (models:/x@latest) to fixed versions once per study.

    Aliases move: the sweep itself registers new versions, so a resumed study (or the preset) would otherwise
    start from another model. The first worker stores the pins on the study; later workers reuse them."""
    from anima.model.resolve import resolve_model

    stored = dict(study.user_attrs.get("pins") or {})
    out: list[str] = []
    for key in PINNED_KEYS:
        given = [o.split("=", 1)[1].strip("'\"") for o in base if o.lstrip("+").split("=", 1)[0] == key and "=" in o]
        uri = given[-1] if given else None
        if not uri or not uri.startswith("models:/") or "@" not in uri:
            continue
        pin = stored.get(key)
        if not pin or pin[0] != uri:
            pin = [uri, resolve_model(uri, tracking).canonical_uri]
            stored[key] = pin
            study.set_user_attr("pins", stored)
        out.append(f"{key}={pin[1]}")
    return out


def run(cfg: DictConfig) -> SweepResult:
    """Run (or join) the study. `cfg` is converted once to `SweepStageConfig`; the raw config stays for the
    sweep's own MLflow run (its logged params and config hash)."""
    import mlflow
    import optuna
    from rich.console import Console

    from anima.stages.train import train
    from anima.sweep.objective import SweepContext, base_overrides, make_objective
    from anima.sweep.recover import end_dead_runs, fail_dead_trials
    from anima.sweep.study import (default_study_name, grid_size, make_storage, open_study, requeue_interrupted,
                                   safe_url, used_budget)
    from anima.tracking.run import stage_run
    from anima.train.interrupt import graceful_interrupt

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # anima prints its own line per trial
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # once per trial otherwise
    console = Console(highlight=False, soft_wrap=True)
    spec = typed(cfg, SweepStageConfig)
    sw, stage = spec.sweep, spec.sweep.stage
    space, propagated = _checked_space(spec)
    storage = make_storage(sw.storage, sw.heartbeat)
    name = sw.study_name or default_study_name(storage, sw.name)
    study = open_study(sw, storage, name, space)
    budget = sw.n_trials
    if sw.sampler == "grid":
        budget = min(budget or 10**9, grid_size(space))
    out_dir = stage_output_dir(spec)
    tags = {"anima.sweep.study": name, "anima.sweep.storage": safe_url(sw.storage), "anima.sweep.space": sw.name,
            "anima.sweep.stage": stage}
    if not spec.run_name:
        with open_dict(cfg):
            cfg.run_name = f"sweep-{name}"  # its trials are <study>-t<N>
    # Ctrl-C asks to stop (between steps, or before the next trial) instead of landing inside a write
    with graceful_interrupt() as stop, stage_run(cfg, extra_tags=tags) as parent:  # ends dead runs KILLED first
        died = fail_dead_trials(study, storage)  # a killed earlier sweep of this study: fail + requeue its trial now
        end_dead_runs(study, parent.info.experiment_id)
        requeued = requeue_interrupted(study)
        before = used_budget(study)
        console.print(f"[bold]sweep[/] study [bold]{name}[/] ({safe_url(sw.storage)}): {stage} trials, "
                      f"{sw.direction} {sw.metric}, sampler={sw.sampler}, pruner={sw.pruner}; "
                      f"{before}/{budget if budget else '∞'} trials done"
                      + (f", {requeued} requeued" if requeued else "")
                      + (f", trial {', '.join(map(str, died))} of a dead worker failed and requeued" if died else ""))
        ctx = SweepContext(sw, spec.seed, name, space, propagated, out_dir, console, run_id=parent.info.run_id,
                           study_run_id=study_run(study, storage, parent.info.run_id))
        ctx.pins = pin_models(spec.tracking, study, base_overrides(sw))
        if ctx.pins:
            console.print(f"  pinned for this study: {' '.join(ctx.pins)}")
        start = time.monotonic()
        interrupted = _run_trials(study, storage, make_objective(ctx, train), budget, sw.timeout, stop)
        result = _finish(ctx, study, parent.info.run_id, interrupted)
        end_dead_runs(study, parent.info.experiment_id)  # trials other workers lost meanwhile (heartbeat)
        mlflow.log_text("\n".join(ctx.trial_lines) + "\n", "trials.log")
        if interrupted:
            console.print(f"[yellow]interrupted[/]: study {name} is intact; resume with "
                          f"`anima sweep sweep={sw.name} sweep.study_name={name}`")
            raise KeyboardInterrupt
    _print_summary(console, ctx, result, time.monotonic() - start)
    return result


def study_run(study: Any, storage: Any, own_run_id: str) -> str:
    """The study's one parent run, which every worker's trials are children of: the run of the study's first
    worker (recorded in the study's storage), if the tracking store has it; else this worker's own run."""
    import mlflow
    from mlflow import MlflowClient

    from anima.sweep.study import claim_study_run

    run_id = claim_study_run(study, storage, own_run_id)
    if run_id != own_run_id:
        try:
            MlflowClient().get_run(run_id)
        except Exception:  # the study's first worker logged to another tracking store
            return own_run_id
    mlflow.set_tag("anima.sweep.study_run", run_id)
    return run_id


def _checked_space(spec: SweepStageConfig) -> tuple[list, list[str]]:
    """The search space and the overrides trials inherit, every key checked before any trial runs."""
    from anima.paths import conf_dir
    from anima.sweep.objective import base_overrides
    from anima.sweep.space import check_space, parse_space

    sw = spec.sweep
    stage = sw.stage
    if not (conf_dir() / f"{stage}.yaml").is_file():
        raise ConfigError(f"sweep.stage={stage}: no conf/{stage}.yaml in {conf_dir()} (stage not available)")
    if sw.n_trials is None and sw.timeout is None:
        raise ConfigError("sweep.n_trials=null needs sweep.timeout (seconds), or the sweep would never end")
    space = parse_space(sw.params)
    propagated = propagated_overrides(spec)
    check_space(stage, [*propagated, *base_overrides(sw)], space)  # a wrong key fails before any trial
    if sw.sampler == "grid":
        for p in space:
            p.grid()  # names the first non-discrete param
    return space, propagated


def _run_trials(study: Any, storage: Any, objective: Any, budget: int | None, timeout: float | None,
                stop: Any) -> bool:
    """One trial at a time until the budget, the timeout or the grid runs out; True when Ctrl-C stopped it."""
    from anima.sweep.objective import MetricMissing
    from anima.sweep.recover import fail_dead_trials

    start = time.monotonic()
    try:
        while True:
            stop.raise_if_requested()
            fail_dead_trials(study, storage)  # before counting: a dead worker's trial is retried, not counted
            if timeout and time.monotonic() - start >= timeout:
                return False
            if not _run_one_trial(study, storage, objective, budget):
                return False
    except KeyboardInterrupt:
        return True
    except MetricMissing:
        raise


def _run_one_trial(study: Any, storage: Any, objective: Any, budget: int | None) -> bool:
    """Run one trial unless the budget or the grid is spent; False when it is. Counting the budget and creating
    the trial happen under the study's lock, so workers sharing a study never overshoot `sweep.n_trials`."""
    from optuna.samplers import GridSampler

    from anima.sweep.lock import StudyLock
    from anima.sweep.study import used_budget

    lock = StudyLock(storage, storage.get_study_id_from_name(study.study_name)) if storage is not None else None

    def released_then_run(trial: Any) -> float:
        if lock is not None:
            lock.release()  # the trial exists (RUNNING, so counted): other workers may go on
        return objective(trial)

    if lock is not None:
        lock.acquire()
    try:
        if budget and used_budget(study) >= budget:
            return False
        if isinstance(study.sampler, GridSampler) and study.sampler.is_exhausted(study):
            return False
        study.optimize(released_then_run, n_trials=1, gc_after_trial=False)
        return True
    finally:
        if lock is not None:
            lock.release()


def _finish(ctx: Any, study: Any, run_id: str, interrupted: bool) -> SweepResult:
    """Best value/params on the parent run and the preset always; plots, table and registry unless Ctrl-C."""
    import mlflow

    from anima.sweep import results

    top = results.ranked(study)
    best = top[0] if top else None
    results.log_best(study, best)
    res = SweepResult(ctx.study_name, run_id, results.counts(study), interrupted=interrupted)
    if best is not None:
        res.best_value, res.best_params, res.best_trial = float(best.value), dict(best.params), best.number
        res.preset = results.write_preset(ctx, best)
        mlflow.log_artifact(str(res.preset), "preset")
    if interrupted:
        return res
    if ctx.sweep.plots and study.get_trials(deepcopy=False):
        res.plots = results.write_plots(study, ctx.out_dir / "plots")
        for p in res.plots:
            mlflow.log_artifact(str(p), "plots")
    table = results.trials_table(study, ctx.out_dir / "trials.csv")
    if table:
        mlflow.log_artifact(str(table))
    if top and ctx.sweep.top_k:
        res.registered = results.register_top_k(ctx, top)
        if res.registered:
            mlflow.set_tag("anima.sweep.registered", " ".join(res.registered))
    return res


def _print_summary(console: Any, ctx: Any, res: SweepResult, seconds: float) -> None:
    c = res.counts
    console.print(f"[bold green]✓ sweep[/] {res.study_name}: this worker ran {len(ctx.trial_lines)} trials in "
                  f"{seconds:.0f}s (run {res.run_id}); the study holds {c.get('complete', 0)} complete, "
                  f"{c.get('pruned', 0)} pruned, {c.get('fail', 0)} failed, {c.get('running', 0)} running")
    if res.best_value is None:
        console.print("  no trial completed: no preset written, nothing registered")
        return
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in res.best_params.items())
    console.print(f"  best: trial {res.best_trial} {ctx.sweep.metric}={res.best_value:.5g}  ({params})")
    console.print(f"  reproduce: anima {ctx.sweep.stage} +experiment=sweeps/{res.study_name}-best   ({res.preset})")
    if res.registered:
        console.print(f"  registered: {' '.join(res.registered)}")
