"""Model registry: log a model dir on the active run and register it as a version, all-or-nothing.

Every registration goes through `register_model` (tags, alias, the run's `anima.registered` pointer) and every
`models:/` URI is built by `model_uri`, so a version's tags and URIs have one definition.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from anima.errors import ModelError

MODEL_ARTIFACT = "model"
#: Run tag naming the version a run registered (pipeline outputs and tests read it).
REGISTERED_TAG = "anima.registered"
GIT_COMMIT_TAG = "mlflow.source.git.commit"


def model_uri(name: str, version: Any = None, alias: str | None = None) -> str:
    """`models:/name/N` (a fixed version) or `models:/name@alias` (a pointer that moves); give exactly one."""
    if (version is None) == (alias is None):
        raise ValueError(f"model_uri({name!r}): give a version or an alias, not {'both' if alias else 'neither'}")
    return f"models:/{name}/{version}" if version is not None else f"models:/{name}@{alias}"


@dataclass(frozen=True)
class RegisteredVersion:
    """A version `register_model` created: its name, number and canonical URI."""

    name: str
    version: str

    @property
    def uri(self) -> str:
        return model_uri(self.name, self.version)


def log_model_dir(model_dir: Path) -> str:
    """Upload a HF model dir as the active run's `model` artifact; returns its artifact URI."""
    import mlflow

    mlflow.log_artifacts(str(model_dir), MODEL_ARTIFACT)
    return f"{mlflow.get_artifact_uri()}/{MODEL_ARTIFACT}"


def metric_tags(metrics: Mapping[str, float]) -> dict[str, Any]:
    """The registry tags a training run's metrics give (absent ones are None, and so not set)."""
    return {"val_ppl": metrics.get("val/ppl"), "val_bpc": metrics.get("val/bpc"),
            "persona_ppl": metrics.get("persona/ppl")}


def register_model(name: str, run_id: str, source: str, tags: Mapping[str, Any], alias: str | None = None,
                   description: str | None = None) -> RegisteredVersion:
    """Register the run's model as a version of `name` and point the run's `anima.registered` tag at it.

    The version carries `tags` (None values dropped, the rest as strings) plus the run's `git_commit`, and
    `alias` when given. Never leaves an empty registered model behind.
    """
    from mlflow import MlflowClient

    client = MlflowClient()
    git = client.get_run(run_id).data.tags.get(GIT_COMMIT_TAG)
    all_tags = {"git_commit": git, **tags}
    mv = _create_version(client, name, run_id, source, {k: str(v) for k, v in all_tags.items() if v is not None},
                         alias, description)
    registered = RegisteredVersion(name, str(mv.version))
    client.set_tag(run_id, REGISTERED_TAG, registered.uri)
    return registered


def _create_version(client, name: str, run_id: str, source: str, tags: dict[str, str], alias: str | None,
                    description: str | None):
    from mlflow.exceptions import MlflowException

    created = False
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="anima models: versions carry their lineage as tags")
        created = True
    try:
        version = client.create_model_version(name, source=source, run_id=run_id, tags=tags,
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


def tag_version(name: str, version: Any, tags: Mapping[str, Any]) -> None:
    """Add or overwrite tags on an existing version (eval scores, promotion, exports, retrain lineage)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


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
