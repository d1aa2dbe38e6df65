"""`resume=auto|<run_id>`: find exactly the interrupted run the user means, or refuse in one line.

`resume=auto` continues only a run of the same stage, registry name and config that ended without finishing
(FAILED, KILLED, or RUNNING with its process gone) and that no sweep or pipeline owns (those resume through
their own command). The user's config is what runs: it must equal the run's saved config on every key but
`RESUME_FREE_KEYS`, which take the user's new value; `resume=<run_id> resume_force=true` lifts that rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from anima.config.stage_schemas import TrainConfig
from anima.errors import AnimaError
from anima.tracking.run import flatten

CHECKPOINT_TAG = "anima.checkpoint_dir"
RESUME_HASH_TAG = "anima.resume_hash"
#: The one list of keys an interrupted run and its continuation may differ in: where and how the run is
#: recorded or displayed, and its budget. Left out of the resume match; the user's new value wins.
RESUME_FREE_KEYS: tuple[str, ...] = (
    "resume", "resume_force", "run_name", "paths", "tracking",
    "trainer.max_steps", "trainer.max_time", "trainer.progress", "trainer.num_samples", "trainer.sample_tokens",
    "sampling",
)
PARENT_TAG = "mlflow.parentRunId"
MISSING = "<unset>"


@dataclass
class ResumePoint:
    """The run to continue. `ckpt` is None when it died before its first checkpoint: it restarts from step 0
    in the same MLflow run and output dir."""

    run_id: str
    ckpt_dir: Path
    ckpt: Path | None
    changed: dict[str, tuple[Any, Any]]  # keys the user changed (free, or forced): key -> (saved, new)


def _free(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUME_FREE_KEYS)


def _current_view(cfg: DictConfig) -> dict[str, Any]:
    """The user's config as the run would have recorded it (resolved, secrets redacted, flattened)."""
    from anima.tracking.redact import redact
    from anima.tracking.run import resolved_config

    return flatten(redact(resolved_config(cfg)))


def resume_hash(cfg: DictConfig) -> str:
    """Hash of every key that must match for a run to be resumed with this config."""
    from anima.fingerprint import hash_obj

    return hash_obj({k: v for k, v in _current_view(cfg).items() if not _free(k)})


def config_diff(saved: dict[str, Any], current: dict[str, Any]
                ) -> tuple[dict[str, tuple[Any, Any]], dict[str, tuple[Any, Any]]]:
    """({key: (saved, new)} for keys that must match but differ, the same for free keys the user changed)."""
    bad, free = {}, {}
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, MISSING), current.get(key, MISSING)
        if a != b:
            (free if _free(key) else bad)[key] = (a, b)
    return bad, free


def _saved_view(run) -> dict[str, Any] | None:
    import os

    import mlflow

    saved = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # a lookup, not a download worth a bar
    try:
        text = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/config.yaml")
    except Exception:
        return None  # died before its config was logged: nothing to compare, nothing to continue
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = saved
    return flatten(OmegaConf.to_container(OmegaConf.create(text), resolve=False))  # type: ignore[arg-type]


def owned_by(tags: dict[str, str]) -> str | None:
    """'a sweep' / 'a pipeline' when the run resumes through its sweep or pipeline, else None."""
    if any(k.startswith("anima.sweep.") for k in tags):
        return "a sweep"
    if any(k.startswith("anima.pipeline.") for k in tags):
        return "a pipeline"
    if tags.get(PARENT_TAG):
        return "a parent run"
    return None


def _point(run, changed: dict[str, tuple[Any, Any]]) -> ResumePoint:
    ckpt_dir = Path(run.data.tags[CHECKPOINT_TAG])
    ckpt = ckpt_dir / "last.ckpt"
    return ResumePoint(run.info.run_id, ckpt_dir, ckpt if ckpt.is_file() else None, changed)


def _mismatch(what: str, run_id: str, bad: dict[str, tuple[Any, Any]], shown: int = 12) -> AnimaError:
    items = [f"{k}={a}, not {b}" for k, (a, b) in bad.items()]
    more = f"; and {len(items) - shown} more" if len(items) > shown else ""
    return AnimaError(f"resume={what}: run {run_id} was started with {'; '.join(items[:shown])}{more} "
                      f"(repeat its settings, or resume=<run_id> resume_force=true to continue with yours)")


def find_resume(cfg: DictConfig, spec: TrainConfig) -> ResumePoint:
    """The run `spec.resume` names (auto: the matching interrupted run), checked against the user's config.
    `spec` is `cfg` typed; `cfg` itself is what is compared with the run's saved config.yaml."""
    import mlflow

    from anima.tracking.liveness import dead_reason, mark_dead_runs
    from anima.tracking.store import setup_mlflow

    exp_id = setup_mlflow(spec.tracking)
    mark_dead_runs([exp_id])
    stage, what, force = spec.stage, spec.resume, spec.resume_force
    current = _current_view(cfg)
    if what != "auto":
        try:
            run = mlflow.get_run(what)
        except Exception:
            raise AnimaError(f"resume={what}: no such run in {spec.tracking.uri}") from None
        tags = run.data.tags
        if tags.get("anima.stage") != stage or CHECKPOINT_TAG not in tags:
            raise AnimaError(f"resume={what}: run {what} is a {tags.get('anima.stage', 'non-anima')} run, "
                             f"not a {stage} training run")
        if run.info.status == "RUNNING" and dead_reason(tags) is None:
            raise AnimaError(f"resume={what}: run {what} is still running (pid {tags.get('anima.pid')} on "
                             f"{tags.get('anima.host')})")
        saved = _saved_view(run)
        if saved is None:
            raise AnimaError(f"resume={what}: run {what} has no config.yaml to continue from")
        bad, free = config_diff(saved, current)
        if bad and not force:
            raise _mismatch(what, what, bad)
        return _point(run, {**free, **bad})
    if force:
        raise AnimaError("resume_force=true needs resume=<run_id>: name the run to continue")
    runs = mlflow.search_runs([exp_id], filter_string=f"tags.`anima.stage` = '{stage}'",
                              order_by=["attributes.start_time DESC"], output_format="list", max_results=200)
    registry_name = spec.registry.name
    first_mismatch: tuple[str, dict[str, tuple[Any, Any]]] | None = None
    for run in runs:
        tags = run.data.tags
        if run.info.status not in ("FAILED", "KILLED") or CHECKPOINT_TAG not in tags or owned_by(tags):
            continue  # finished, still alive (dead ones were just marked KILLED), or a sweep/pipeline's
        if run.data.params.get("registry.name", registry_name) != registry_name:
            continue
        saved = _saved_view(run)
        if saved is None:
            continue
        bad, free = config_diff(saved, current)
        if not bad:
            return _point(run, free)
        if first_mismatch is None:
            first_mismatch = (run.info.run_id, bad)
    if first_mismatch is not None:
        raise _mismatch("auto", *first_mismatch)
    raise AnimaError(f"resume=auto: no interrupted {stage} run of {registry_name} to resume in {spec.tracking.uri} "
                     "(sweep trials and pipeline steps resume through their sweep or pipeline)")


__all__ = ["find_resume", "ResumePoint", "resume_hash", "config_diff", "owned_by", "CHECKPOINT_TAG",
           "RESUME_HASH_TAG", "RESUME_FREE_KEYS"]
