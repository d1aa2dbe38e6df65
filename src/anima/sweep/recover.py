"""Clean up after sweep workers that died without a word (SIGKILL, the OOM killer, a lost machine).

Every trial records the MLflow run of the sweep that runs it (`sweep_run_id`). That run's liveness is judged by
`anima.tracking.liveness` (the flock its process holds; a heartbeat tag on a shared store): when it is dead, or
already ended, a trial it left RUNNING is failed at once instead of after Optuna's heartbeat grace period
(3 beats, still the fallback for a trial whose worker never got that far). Either way the storage's `RetryOnce`
callback queues the trial's parameters again, once, and `used_budget` does not count the dead attempt, so the
study still ends with `sweep.n_trials` finished trials. In MLflow the dead worker's runs end KILLED (liveness),
and the failed trial's child run is tagged FAIL with the reason."""

from __future__ import annotations

import warnings

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from anima.sweep.tags import SWEEP_RUN, TAG_STATE, TAG_STUDY, TAG_TRIAL

DIED = "worker died"


def _gone(run_id: str) -> str | None:
    """Why the sweep run `run_id` (and so its worker) is certainly gone, or None while it may be alive."""
    from mlflow import MlflowClient

    from anima.tracking.liveness import dead_reason

    try:
        run = MlflowClient().get_run(run_id)
    except Exception:  # another tracking store, or none reachable: leave it to Optuna's heartbeat
        return None
    if run.info.status != "RUNNING":
        return f"its sweep run {run_id} ended {run.info.status}"
    return dead_reason(run.data.tags)


def fail_dead_trials(study: optuna.Study, storage: RDBStorage | None) -> list[int]:
    """FAIL the RUNNING trials of dead workers and queue each retry once; returns their trial numbers.
    Needs the tracking store set up (call inside the sweep's run)."""
    if storage is None:
        return []
    failed: list[int] = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        run_id = t.user_attrs.get(SWEEP_RUN)
        reason = _gone(str(run_id)) if run_id else None
        if reason is None:
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "error", f"{DIED}: {reason}")  # finished trials are read-only
            if storage.set_trial_state_values(t._trial_id, TrialState.FAIL):  # atomic: one recoverer wins
                failed.append(t._trial_id)
        except UpdateFinishedTrialError:
            pass  # another worker (or the heartbeat) got there first
    retry = storage.get_heartbeat_stale_trial_callback()
    numbers = []
    for trial_id in failed:
        frozen = storage.get_trial(trial_id)
        numbers.append(frozen.number)
        if retry is not None:
            retry(study, frozen)  # make_storage's RetryOnce: same params, queued once
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # no sweep run to judge by: heartbeat silent for the grace period
    return numbers


def end_dead_runs(study: optuna.Study, experiment_id: str) -> list[str]:
    """End what dead workers left behind: RUNNING runs whose process is gone become KILLED (liveness), and the
    child run of a trial that failed that way is tagged FAIL with the reason (KILLED too, if still RUNNING).
    Returns the ids of the trial runs fixed."""
    from mlflow import MlflowClient

    from anima.tracking.liveness import mark_dead_runs

    mark_dead_runs([experiment_id])
    name = study.study_name
    if "'" in name or "\\" in name:
        return []
    client = MlflowClient()
    stuck = client.search_runs([experiment_id], f"tags.`{TAG_STUDY}` = '{name}' and tags.`{TAG_STATE}` = 'RUNNING'",
                               max_results=5000)
    if not stuck:
        return []
    trials = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    fixed = []
    for run in stuck:
        trial = trials.get(int(run.data.tags.get(TAG_TRIAL, -1)))
        if trial is None or trial.user_attrs.get("run_id") != run.info.run_id:
            continue  # still running somewhere, or not this trial's run
        client.set_tag(run.info.run_id, TAG_STATE, "FAIL")
        client.set_tag(run.info.run_id, "anima.error", str(trial.user_attrs.get("error") or f"{DIED} (heartbeat)"))
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "KILLED")
        fixed.append(run.info.run_id)
    return fixed
