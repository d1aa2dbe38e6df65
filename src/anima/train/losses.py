"""Loss terms: small modules the objective is a weighted sum of (torchtune style).

Each term is called every training step with the step number, the batch and the student's logits, and
returns a scalar (or None when it does not apply at that step, e.g. a guard that fires every N steps).
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

import torch
import torch.nn.functional as F

from anima.errors import DataError
from anima.train.labels import IGNORE_INDEX, NO_TARGETS


class LossTerm(Protocol):
    """A term may set `needs_step_logits = False` when it never reads the batch's logits (it runs its own
    forward), so the module can skip materialising them."""

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
        raise DataError(NO_TARGETS)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), flat_labels,
                           ignore_index=IGNORE_INDEX, reduction=reduction)


class LanguageModelingLoss:
    """Next-token cross-entropy; on chat data only assistant tokens carry labels.

    `fusable`: the loss can also be computed from the final hidden states and the LM head's weight
    (`from_hidden`, chunked, logits never materialised); the module does so when no other term needs the
    batch's logits."""

    name = "lm"
    fusable = True

    def __init__(self, weight: float = 1.0, chunk: int = 1024):
        self.weight, self.chunk = weight, chunk

    def __call__(self, step: int, batch: dict[str, torch.Tensor], logits: torch.Tensor,
                 module: Any) -> Optional[torch.Tensor]:
        return token_cross_entropy(logits, batch["labels"])

    def from_hidden(self, batch: dict[str, torch.Tensor], hidden: torch.Tensor, head_weight: torch.Tensor,
                    compiled: bool = False) -> torch.Tensor:
        from anima.train.linear_ce import linear_cross_entropy

        return linear_cross_entropy(hidden, head_weight, batch["labels"], self.chunk, compiled)
