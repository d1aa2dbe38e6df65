"""Point MLflow at the project's store and make sure the experiment exists with its artifact root."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_configured: tuple[str, str] | None = None


def setup_mlflow(tracking: Any) -> str:
    """Set the tracking URI (creating the sqlite dir) and return the experiment id."""
    global _configured
    import mlflow

    uri = str(tracking.uri)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    name = str(tracking.experiment)
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        root = str(tracking.artifact_root)
        if "://" not in root:
            Path(root).mkdir(parents=True, exist_ok=True)
            root = Path(root).resolve().as_uri()
        try:
            exp_id = mlflow.create_experiment(name, artifact_location=f"{root}/{name}")
        except Exception:  # created concurrently by another process
            exp_id = mlflow.get_experiment_by_name(name).experiment_id
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    _configured = (uri, exp_id)
    return exp_id


def client():
    from mlflow import MlflowClient

    return MlflowClient()
