"""Per-request limits of the HTTP server: stated once here; the `serve.limits` schema takes its defaults from it.

Kept free of FastAPI so the config schema (imported at CLI start-up) can read the defaults cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class ServeLimits:
    """Per-request limits; anything above them is answered 4xx before any decoding starts."""

    max_body_bytes: int = 1_000_000
    max_messages: int = 64
    max_tokens: int = 512  # upper bound for max_tokens / max_completion_tokens / num_predict
    max_prompt_chars: int = 32_000  # total characters over all messages (or the completion prompt)
    max_stop: int = 4

    @classmethod
    def from_config(cls, limits: Any) -> "ServeLimits":
        """The ``serve.limits`` config group (DictConfig or ServeLimitsConfig) as limits."""
        return cls(**{f.name: int(getattr(limits, f.name)) for f in fields(cls)})
