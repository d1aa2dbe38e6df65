"""`stage_run`: every stage is one MLflow run carrying the tracking contract of DESIGN.md."""

from __future__ import annotations

import contextlib
import shlex
from typing import Any, Iterator, Sequence

from omegaconf import DictConfig, OmegaConf

from anima.fingerprint import hash_obj
from anima.paths import SOURCE_ROOT
from anima.tracking.context import current
from anima.tracking.gitinfo import git_state
from anima.tracking.names import run_name
from anima.tracking.redact import redact, redact_overrides, redact_text
from anima.tracking.store import setup_mlflow

# Keys that say where/how a run is recorded, not what it computes: excluded from the config hash.
NON_SEMANTIC_KEYS = ("paths", "tracking", "run_name", "resume", "resume_force")


def resolved_config(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def config_hash(cfg: DictConfig | dict) -> str:
    """Hash of what a run computes (not where it is stored): the pipeline's cache key."""
    data = resolved_config(cfg) if isinstance(cfg, DictConfig) else cfg
    return hash_obj({k: v for k, v in data.items() if k not in NON_SEMANTIC_KEYS})


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def log_config(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """Flattened params + config.yaml + overrides + command line, secrets redacted."""
    import mlflow

    data = redact(resolved_config(cfg))
    params = {k: str(v)[:500] for k, v in flatten(data).items()}
    items = list(params.items())
    for i in range(0, len(items), 100):
        mlflow.log_params(dict(items[i:i + 100]))
    mlflow.log_text(OmegaConf.to_yaml(OmegaConf.create(data)), "config.yaml")
    mlflow.log_text("\n".join(redact_overrides(overrides)) + "\n", "overrides.txt")


@contextlib.contextmanager
def stage_run(
    cfg: DictConfig,
    *,
    run_id: str | None = None,
    overrides: Sequence[str] | None = None,
    nested: bool = False,
    extra_tags: dict[str, str] | None = None,
) -> Iterator[Any]:
    """Start (or continue, given `run_id`) the stage's MLflow run; end it FINISHED, FAILED or KILLED.
    ``cfg`` is the composed DictConfig (or a resolved copy of it): the run logs and hashes it whole, and its
    schema already made `stage` and `run_name` strings."""
    import mlflow

    from anima.tracking.liveness import RunLock, mark_dead_runs, process_tags

    setup_mlflow(cfg.tracking)
    mark_dead_runs()  # a run killed -9 earlier is shown KILLED, not RUNNING forever
    context = current()
    overrides = list(context.overrides if overrides is None else overrides)
    sha, dirty = git_state(SOURCE_ROOT)  # the code that ran, wherever the project's data lives
    stage = cfg.stage
    name = redact_text(cfg.get("run_name") or run_name(cfg, overrides))  # explicit run_name wins
    parent = mlflow.active_run() if nested else None
    tags = {
        **context.tags,
        "anima.stage": stage,
        "anima.command": shlex.join(["anima", stage, *redact_overrides(overrides)]),
        "anima.config_hash": config_hash(cfg),
        "mlflow.source.git.commit": sha,
        "anima.git_dirty": str(dirty).lower(),
        **{k: redact_text(str(v)) for k, v in (extra_tags or {}).items()},
        **process_tags(),
    }
    if parent is not None:
        tags["mlflow.parentRunId"] = parent.info.run_id
    if context.output_dir is not None:
        tags["anima.output_dir"] = str(context.output_dir)
    run = mlflow.start_run(run_id=run_id, run_name=None if run_id else name, nested=nested, tags=tags)
    lock = RunLock(run.info.run_id, cfg.tracking)  # held while this process runs it (liveness.py)
    try:
        lock.acquire()
        if run_id is None:
            log_config(cfg, overrides)
        yield run
    except KeyboardInterrupt:
        mlflow.end_run(status="KILLED")
        raise
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")
    finally:
        lock.release()


def log_metric_rows(run_id: str, rows: Sequence[tuple[str, float, int, int]]) -> None:
    """(key, value, timestamp ms, step) rows as one batch: what the tracking helper's Lightning logger sends."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    MlflowClient().log_batch(run_id, metrics=[Metric(k, v, t, s) for k, v, t, s in rows])


def run_params(run_id: str) -> dict[str, str]:
    import mlflow

    return dict(mlflow.get_run(run_id).data.params)
