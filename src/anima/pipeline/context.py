"""How a step's run becomes a child of the pipeline run, and gets its own output dir and overrides.

Stages start their MLflow run themselves (`stage_run`), not nested. While a step runs, its run context
(`anima.tracking.context`) carries `mlflow.parentRunId` (the pipeline run) and the step name, which `stage_run`
adds to every run created without an explicit parent, so the UI nests it; runs that name their own parent
(sweep trials) keep it. The context also gives the step its own output dir and overrides, as if
`anima <stage> <overrides>` had been run.
"""

from __future__ import annotations

from pathlib import Path
from typing import ContextManager, Mapping, Sequence

PARENT_TAG = "mlflow.parentRunId"
STEP_TAG = "anima.pipeline.step"
PIPELINE_TAG = "anima.pipeline.run_id"

NAME_TAG = "anima.pipeline.name"


def step_context(parent_run_id: str, step: str, out_dir: Path, overrides: Sequence[str], pipeline: str = "",
                 extra: Mapping[str, str] | None = None) -> ContextManager:
    """Runs started inside this block are children of `parent_run_id`, tagged with the step and pipeline
    names (and `extra`: the key the step runs for, see `interrupted`); the step writes into `out_dir`."""
    from anima.tracking.context import run_context

    tags = {PARENT_TAG: parent_run_id, STEP_TAG: step, PIPELINE_TAG: parent_run_id, **(extra or {})}
    if pipeline:
        tags[NAME_TAG] = pipeline
    return run_context(output_dir=out_dir, overrides=overrides, tags=tags)
