"""Per-request limits of the HTTP server, as the server uses them; the numbers are stated once, in the
`serve.limits` config schema (`anima.config.serve.ServeLimitsConfig`). Kept free of FastAPI."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from anima.config.serve import ServeLimitsConfig

_DEFAULTS = ServeLimitsConfig()


@dataclass(frozen=True)
class ServeLimits:
    """Per-request limits; anything above them is answered 4xx before any decoding starts."""

    max_body_bytes: int = _DEFAULTS.max_body_bytes
    max_messages: int = _DEFAULTS.max_messages
    max_tokens: int = _DEFAULTS.max_tokens  # upper bound for max_tokens / max_completion_tokens / num_predict
    max_prompt_chars: int = _DEFAULTS.max_prompt_chars  # over all messages (or the completion prompt)
    max_stop: int = _DEFAULTS.max_stop

    @classmethod
    def from_config(cls, limits: Any) -> "ServeLimits":
        """The ``serve.limits`` config group (DictConfig or ServeLimitsConfig) as limits."""
        return cls(**{f.name: int(getattr(limits, f.name)) for f in fields(cls)})
