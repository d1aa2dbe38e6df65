"""`DataBundle`: what data preparation (text or chat) hands the trainer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch


@dataclass
class DataBundle:
    """Everything a training run consumes, plus what the tracking contract records about it."""

    tokenizer_dir: Path
    tokenizer: Any
    make_train: Callable[[Callable[[], int], int], torch.utils.data.IterableDataset]  # (start, total) -> dataset
    val_sets: dict[str, torch.utils.data.Dataset]
    fingerprint: str
    dataset_name: str
    dataset_path: str
    chars_per_token: dict[str, float] = field(default_factory=dict)
    sample_prompts: list[list[int]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    aux: dict[str, Any] = field(default_factory=dict)  # stage-specific extras (chat rows for kd/persona_guard)
    lineage: dict[str, str] = field(default_factory=dict)  # tags for the registered version (datasets, teacher)
