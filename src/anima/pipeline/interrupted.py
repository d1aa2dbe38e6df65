"""A step whose pipeline died mid-run (Ctrl-C, kill -9, a lost machine) continues in the same MLflow run.

Every step run carries the key it was started for (`anima.pipeline.pending_key`, set when the run is created;
the cache key tag is set only after success). The next invocation of the same command computes the same key;
if the newest run of that step with that key ended KILLED (Ctrl-C, or killed -9 and since marked KILLED by
`anima.tracking.liveness.mark_dead_runs`), a training step continues it through the training stage's own
`resume=<run_id>`: from its last.ckpt, or from step 0 in the same run when it died before its first
checkpoint. Other stages start a fresh run (a sweep's study continues through its own storage).

The pipeline's parent run is not continued: each invocation is its own parent run (its command, timing and
what it ran or reused are that invocation's); the dead one is marked KILLED and the resumed step run moves
under the new parent (`mlflow.parentRunId` is re-set when the run is continued).
"""

from __future__ import annotations

from typing import Any

from anima.errors import AnimaError
from anima.pipeline.context import NAME_TAG, STEP_TAG

PENDING_TAG = "anima.pipeline.pending_key"
RESUMED_TAG = "anima.pipeline.resumed"
TRAIN_STAGES = ("pretrain", "sft", "distill")


def mark_dead(experiment_id: str) -> list[str]:
    """End every RUNNING run whose process is gone as KILLED (the earlier, killed pipeline and its step)."""
    from anima.tracking.liveness import mark_dead_runs

    return mark_dead_runs([experiment_id])


def find_interrupted(experiment_id: str, pipeline: str, step: str, stage: str, key: str) -> Any | None:
    """The run of this step, started for this key by an earlier invocation, that can be continued; None when
    there is none. A run still alive in another process is refused (two pipelines would train it twice)."""
    from mlflow import MlflowClient

    from anima.tracking.liveness import HOST_TAG, PID_TAG, is_alive
    from anima.train.resume import CHECKPOINT_TAG

    runs = MlflowClient().search_runs(
        [experiment_id], filter_string=f"tags.`{PENDING_TAG}` = '{key}' and tags.`{STEP_TAG}` = '{step}' and "
        f"tags.`{NAME_TAG}` = '{pipeline}' and tags.`anima.stage` = '{stage}'",
        order_by=["attributes.start_time DESC"], max_results=5)
    for run in runs:
        status, tags = run.info.status, run.data.tags
        if status == "FINISHED":
            return None  # the newest one finished: nothing to continue (its outputs are the cache's business)
        if status == "RUNNING" and is_alive(run):
            raise AnimaError(f"step {step}: its run {run.info.run_id} is still running (pid {tags.get(PID_TAG)} on "
                             f"{tags.get(HOST_TAG)}): wait for that pipeline or stop it, then run this again")
        if status == "KILLED" and stage in TRAIN_STAGES and tags.get(CHECKPOINT_TAG) and _has_config(run):
            return run
        return None  # FAILED (an error, not an interruption) or not resumable: start afresh
    return None


def _has_config(run: Any) -> bool:
    """Killed before its config was logged, a run cannot be continued (`resume=` compares against it)."""
    from mlflow import MlflowClient

    try:
        return any(a.path == "config.yaml" for a in MlflowClient().list_artifacts(run.info.run_id))
    except Exception:  # noqa: BLE001 - unreadable artifacts: start afresh rather than fail
        return False
