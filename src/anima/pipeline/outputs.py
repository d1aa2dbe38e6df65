"""What a step hands to the next: read from the stage's return value and its MLflow run's tags.

Any stage works without knowing about pipelines: a `TrainResult` gives model_uri/model_dir/version, a sweep
result its best registered trial, a data run its `anima.dataset`/`anima.data_fingerprint` tags, and any run
tagged `anima.registered` (merge, distill, ...) a model URI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anima.pipeline.context import PARENT_TAG, STEP_TAG
from anima.tracking.registry import REGISTERED_TAG

RESULT_FIELDS = ("run_id", "model_uri", "model_dir", "registered_name", "version", "fingerprint", "dataset",
                 "study_name", "alias")
TAG_OUTPUTS = {REGISTERED_TAG: "model_uri", "anima.dataset": "dataset", "anima.data_fingerprint": "fingerprint"}


def child_run(parent_run_id: str, step: str, experiment_id: str, result: Any) -> Any | None:
    """The step's own run: the one the result names, else the newest child of the pipeline run for this step."""
    from mlflow import MlflowClient

    client = MlflowClient()
    run_id = getattr(result, "run_id", None) or (result.get("run_id") if isinstance(result, dict) else None)
    if run_id:
        return client.get_run(str(run_id))
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and "
                              f"tags.`{STEP_TAG}` = '{step}'", order_by=["attributes.start_time DESC"],
                              max_results=1)
    return runs[0] if runs else None


def _scalar(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    return v if isinstance(v, (str, int, float, bool)) else None


def extract(result: Any, run: Any | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if run is not None:
        out["run_id"] = run.info.run_id
        for tag, key in TAG_OUTPUTS.items():
            if run.data.tags.get(tag):
                out[key] = run.data.tags[tag]
    items = result.items() if isinstance(result, dict) else ((f, getattr(result, f, None)) for f in RESULT_FIELDS)
    for key, value in items:
        if key in RESULT_FIELDS and _scalar(value) not in (None, ""):
            out[key] = _scalar(value)
    registered = getattr(result, "registered", None)  # sweep: the top trials, best first
    if not registered and run is not None and run.data.tags.get("anima.sweep.registered"):
        registered = run.data.tags["anima.sweep.registered"].split()
    if registered and "model_uri" not in out:
        out["model_uri"] = str(registered[0])
    if isinstance(result, Path) and "path" not in out:  # tokenizer: its dir
        out["path"] = str(result)
    if "version" in out:
        out["version"] = str(out["version"])
    return out
