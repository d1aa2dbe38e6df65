"""Loss terms: small modules the objective is a weighted sum of (torchtune style).

Each term is called every training step with the step number, the batch and the student's logits, and
returns a scalar (or None when it does not apply at that step, e.g. a guard that fires every N steps).
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

import torch
import torch.nn.functional as F

from anima.errors import DataError

IGNORE_INDEX = -100


class LossTerm(Protocol):
    name: str
    weight: float

    def __call__(self, step: int, batch: dict[str, torch.Tensor], logits: torch.Tensor,
                 module: Any) -> Optional[torch.Tensor]: ...


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy over positions whose label is not IGNORE_INDEX (labels already shifted).

    A batch with no trainable position is an error, not a silent zero loss: for chat data it means the
    assistant mask is empty (e.g. every reply was truncated away).
    """
    flat_labels = labels.reshape(-1)
    if not bool((flat_labels != IGNORE_INDEX).any()):
        raise DataError("a training batch has no target tokens (assistant mask all zeros); "
                        "check the chat template and max_seq_len truncation")
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), flat_labels,
                           ignore_index=IGNORE_INDEX, reduction=reduction)


class LanguageModelingLoss:
    """Next-token cross-entropy; on chat data only assistant tokens carry labels."""

    name = "lm"

    def __init__(self, weight: float = 1.0):
        self.weight = weight

    def __call__(self, step: int, batch: dict[str, torch.Tensor], logits: torch.Tensor,
                 module: Any) -> Optional[torch.Tensor]:
        return token_cross_entropy(logits, batch["labels"])
