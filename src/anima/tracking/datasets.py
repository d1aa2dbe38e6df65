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
    """Record `name@fingerprint` (stored at `source`) as an input of the active run, in `context`."""
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset

    dataset = MetaDataset(source=_local_source_class()(source), name=name, digest=fingerprint[:36])
    mlflow.log_input(dataset, context=context, tags={"fingerprint": fingerprint, **(tags or {})})
