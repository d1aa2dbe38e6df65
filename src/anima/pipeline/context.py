"""How a step's run becomes a child of the pipeline run, and gets its own output dir and overrides.

Stages start their MLflow run themselves (`stage_run`), not nested. While a step runs, `stage_run`
(via `anima.tracking.run.inherited_tags`) adds `mlflow.parentRunId` (the pipeline run) and the step name to every run created without an
explicit parent, so the UI nests it; runs that name their own parent (sweep trials) keep it. The step also
sees a Hydra runtime of its own (output dir, task overrides), as if `anima <stage> <overrides>` had been run.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Mapping, Sequence

PARENT_TAG = "mlflow.parentRunId"
STEP_TAG = "anima.pipeline.step"
PIPELINE_TAG = "anima.pipeline.run_id"

NAME_TAG = "anima.pipeline.name"


@contextlib.contextmanager
def child_runs_of(parent_run_id: str, step: str, pipeline: str = "",
                  extra: Mapping[str, str] | None = None) -> Iterator[None]:
    """Runs started inside this block are children of `parent_run_id`, tagged with the step and pipeline
    names (and `extra`: the key the step runs for, see `interrupted`)."""
    from anima.tracking.run import inherited_tags

    tags = {PARENT_TAG: parent_run_id, STEP_TAG: step, PIPELINE_TAG: parent_run_id, **(extra or {})}
    if pipeline:
        tags[NAME_TAG] = pipeline
    with inherited_tags(tags):
        yield


@contextlib.contextmanager
def step_runtime(out_dir: Path, overrides: Sequence[str]) -> Iterator[None]:
    """Hydra's runtime output dir and task overrides as the step's stage reads them (`tracking.run`)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    inst = HydraConfig.instance()
    saved = inst.cfg
    out_dir.mkdir(parents=True, exist_ok=True)
    inst.cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(out_dir)},
                                           "overrides": {"task": list(overrides)}}})
    try:
        yield
    finally:
        inst.cfg = saved
