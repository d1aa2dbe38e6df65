"""Model registry: log a model dir on the active run and register it as a version, all-or-nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anima.errors import ModelError

MODEL_ARTIFACT = "model"


def log_model_dir(model_dir: Path) -> str:
    """Upload a HF model dir as the active run's `model` artifact; returns its artifact URI."""
    import mlflow

    mlflow.log_artifacts(str(model_dir), MODEL_ARTIFACT)
    return f"{mlflow.get_artifact_uri()}/{MODEL_ARTIFACT}"


def register_version(name: str, run_id: str, source: str, tags: dict[str, Any],
                     alias: str | None = None, description: str | None = None):
    """Create a version of `name` for the run's model; never leaves an empty registered model behind."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    created = False
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="anima models: versions carry their lineage as tags")
        created = True
    try:
        version = client.create_model_version(name, source=source, run_id=run_id,
                                              tags={k: str(v) for k, v in tags.items() if v is not None},
                                              description=description)
        if alias:
            client.set_registered_model_alias(name, alias, version.version)
        return version
    except BaseException:
        if created:
            try:
                client.delete_registered_model(name)
            except MlflowException:
                pass
        raise


def list_aliases(name: str) -> dict[str, str]:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return dict(MlflowClient().get_registered_model(name).aliases)
    except MlflowException:
        return {}


def require_registered(name: str):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient().get_registered_model(name)
    except MlflowException:
        names = [m.name for m in MlflowClient().search_registered_models()]
        raise ModelError(f"no registered model {name!r}; registered: {', '.join(names) or 'none'}") from None
