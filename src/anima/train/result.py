"""What a training run hands back to its caller (a stage, a sweep trial, a pipeline step)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anima.tracking.registry import model_uri


@dataclass
class TrainResult:
    """The run, its saved model dir and final metrics, and the registered version when there is one."""

    run_id: str
    model_dir: Path
    metrics: dict[str, float]
    version: str | None = None
    registered_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def model_uri(self) -> str:
        if self.version:
            return model_uri(self.registered_name, self.version)
        return f"runs:/{self.run_id}/model"
