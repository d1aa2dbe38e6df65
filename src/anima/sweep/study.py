"""Create or resume the Optuna study: storage (sqlite under mlruns/ or any database URL), sampler, pruner,
the study's name, and how many trials are still to run (a budget shared by every worker)."""

from __future__ import annotations

import copy
import re
import time
from pathlib import Path
from typing import Any, Sequence

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from anima.config.sweep import SweepConfig
from anima.errors import ConfigError
from anima.sweep.space import Param
from anima.sweep.tags import SWEEP_RUN
from anima.tracking.database import is_postgres, with_driver
from anima.tracking.redact import redact

INTERRUPTED = "interrupted"  # user attr of a trial stopped by Ctrl-C: rerun when the study resumes
RETRY_OF = "retry_of"
_RACE = ("already exists", "unique constraint", "duplicate key", "database is locked")  # concurrent table creation
NOT_INHERITED = ("error", SWEEP_RUN, "run_id", "steps", "seconds")  # what a retry must not copy from the dead try


class RetryOnce(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a trial whose worker died (queued WAITING with the same params, once), minus the dead
    attempt's error, worker and run: the retry records its own, and a copied dead worker's run would get it
    failed before it records them."""

    def __init__(self) -> None:
        super().__init__(max_retry=1)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        clean = copy.deepcopy(trial)
        clean.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in NOT_INHERITED}
        super().__call__(study, clean)


def make_storage(url: str | None, heartbeat: int) -> RDBStorage | None:
    """An RDB storage with heartbeats: a trial whose worker died is failed after 3 beats and retried once."""
    if not url:
        return None
    url = with_driver(url)
    engine: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        engine = {"connect_args": {"timeout": 60}}
    else:
        engine = {"pool_pre_ping": True}
        if is_postgres(url):  # an unreachable database fails in seconds, not after the OS's TCP timeout
            engine["connect_args"] = {"connect_timeout": 10}
    for attempt in range(3):  # workers started together may race to create the tables: the loser retries
        try:
            return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                              heartbeat_stale_trial_callback=RetryOnce())
        except Exception as e:  # bad URL, unreachable server, missing driver
            if attempt < 2 and any(w in str(e).lower() for w in _RACE):
                time.sleep(1.0 + attempt)
                continue
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"sweep.storage={safe_url(url)}: cannot open: {first[:200]}") from None
    raise AssertionError("unreachable")


def safe_url(url: str | None) -> str:
    return str(redact({"u": url})["u"]) if url else "memory"


def make_sampler(sweep: SweepConfig, space: Sequence[Param]) -> optuna.samplers.BaseSampler:
    seed = sweep.sampler_seed
    if sweep.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if sweep.sampler == "grid":
        return optuna.samplers.GridSampler({p.key: p.grid() for p in space}, seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=sweep.n_startup_trials, multivariate=True,
                                      constant_liar=True)  # constant liar: parallel workers spread out


def make_pruner(sweep: SweepConfig) -> optuna.pruners.BasePruner:
    if sweep.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=sweep.pruner_startup_trials,
                                           n_warmup_steps=sweep.pruner_warmup_steps)
    if sweep.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, sweep.pruner_warmup_steps),
                                              reduction_factor=sweep.reduction_factor)
    return optuna.pruners.NopPruner()


def grid_size(space: Sequence[Param]) -> int:
    n = 1
    for p in space:
        n *= len(p.grid())
    return n


def default_study_name(storage: RDBStorage | None, space_name: str) -> str:
    """`<space>-<N>`: the next free number, so each plain `anima sweep` starts a new study."""
    prefix = space_name.replace("_", "-")
    names = optuna.get_all_study_names(storage) if storage is not None else []
    used = [int(m.group(1)) for n in names if (m := re.fullmatch(re.escape(prefix) + r"-(\d+)", n))]
    return f"{prefix}-{max(used, default=0) + 1}"


def open_study(sweep: SweepConfig, storage: RDBStorage | None, name: str, space: Sequence[Param]) -> optuna.Study:
    """Create the study or load it (same name = resume / join); refuse to resume with another objective."""
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage)} if storage is not None else {}
    if name in existing:
        old = existing[name]
        want = optuna.study.StudyDirection.MINIMIZE if sweep.direction == "minimize" else \
            optuna.study.StudyDirection.MAXIMIZE
        if old.direction != want:
            raise ConfigError(f"sweep.direction={sweep.direction}: study {name!r} was created to "
                              f"{old.direction.name.lower()}")
        for key, now in (("metric", sweep.metric), ("stage", sweep.stage)):
            was = old.user_attrs.get(key)
            if was is not None and was != now:
                raise ConfigError(f"sweep.{key}={now}: study {name!r} was created with {key}={was}; "
                                  f"pick another sweep.study_name")
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction=sweep.direction,
                                    sampler=make_sampler(sweep, space), pruner=make_pruner(sweep), load_if_exists=True)
    except Exception as e:
        raise ConfigError(f"sweep.study_name={name}: cannot open study: {str(e).splitlines()[0][:200]}") from None
    if name not in existing:
        study.set_user_attr("metric", sweep.metric)
        study.set_user_attr("stage", sweep.stage)
        study.set_user_attr("space", sweep.name)
    return study


def _retried(trials: Sequence[optuna.trial.FrozenTrial]) -> set[int]:
    out: set[int] = set()
    for t in trials:
        n = RetryHeartbeatStaleTrialCallback.retried_trial_number(t)
        if n is not None:
            out.add(n)
        if RETRY_OF in t.user_attrs:
            out.add(int(t.user_attrs[RETRY_OF]))
    return out


def used_budget(study: optuna.Study) -> int:
    """Trials that count towards n_trials: finished, pruned, running, queued, and failures that were not
    a Ctrl-C or a crashed worker (those are rerun)."""
    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)
    n = 0
    for t in trials:
        if t.state == TrialState.FAIL and (t.user_attrs.get(INTERRUPTED) or t.number in retried):
            continue
        n += 1
    return n


def requeue_interrupted(study: optuna.Study) -> int:
    """Queue the parameters of trials stopped by Ctrl-C again (once), so a resumed study reruns them."""
    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)
    n = 0
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get(INTERRUPTED) and t.number not in retried and t.params:
            study.enqueue_trial(t.params, user_attrs={RETRY_OF: t.number}, skip_if_exists=False)
            n += 1
    return n


def retry_of(trial: optuna.Trial) -> int | None:
    """The number of the trial this one reruns: a Ctrl-C'd trial (requeued) or a dead worker's (retry callback)."""
    try:
        n = trial.storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
    except Exception:
        n = None
    if n is None:
        n = trial.user_attrs.get(RETRY_OF)
    return int(n) if n is not None else None


STUDY_RUN = "mlflow_parent_run"  # study user attr: the study's one parent MLflow run (its first worker's run)


def claim_study_run(study: optuna.Study, storage: RDBStorage | None, run_id: str) -> str:
    """The study's one parent run: the first worker to get here records its own sweep run, atomically (the
    database's unique (study, key) constraint decides a race), and every later worker -- in any project root,
    on any machine sharing the storage -- reads it back. Returns the recorded run id."""
    from anima.sweep.lock import insert_study_attr

    if storage is None:  # in memory: this worker is the only one
        return run_id
    study_id = storage.get_study_id_from_name(study.study_name)
    current = storage.get_study_user_attrs(study_id).get(STUDY_RUN)
    if current:
        return str(current)
    insert_study_attr(storage, study_id, STUDY_RUN, run_id)  # loses quietly when another worker was first
    return str(storage.get_study_user_attrs(study_id).get(STUDY_RUN) or run_id)
