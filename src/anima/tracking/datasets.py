"""Data fingerprints as MLflow dataset inputs (the UI's "Datasets used" column)."""

from __future__ import annotations

from typing import Any


def _local_source_class():
    from mlflow.data.dataset_source import DatasetSource

    class LocalDirSource(DatasetSource):
        """A dataset directory on this machine (mlflow ships no plain local-path source)."""

        def __init__(self, uri: str):
            self.uri = uri

        @staticmethod
        def _get_source_type() -> str:
            return "local"

        def load(self, **kwargs: Any) -> str:
            return self.uri

        @staticmethod
        def _can_resolve(raw_source: Any) -> bool:
            return False

        @classmethod
        def _resolve(cls, raw_source: Any) -> "LocalDirSource":
            return cls(str(raw_source))

        def to_dict(self) -> dict:
            return {"uri": self.uri}

        @classmethod
        def from_dict(cls, source_dict: dict) -> "LocalDirSource":
            return cls(source_dict["uri"])

    return LocalDirSource


def log_dataset_input(name: str, fingerprint: str, source: str, context: str,
                      tags: dict[str, str] | None = None) -> None:
    """Record `name@fingerprint` (stored at `source`) as an input of the active run, in `context`.

    The source is recorded with any credentials masked (a URI's password, secret query values)."""
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset

    from anima.tracking.redact import redact_text

    safe_tags = {k: redact_text(str(v)) for k, v in {"fingerprint": fingerprint, **(tags or {})}.items()}
    dataset = MetaDataset(source=_local_source_class()(redact_text(str(source))), name=redact_text(name),
                          digest=fingerprint[:36])
    mlflow.log_input(dataset, context=context, tags=safe_tags)
