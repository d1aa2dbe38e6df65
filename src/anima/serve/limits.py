"""Per-request limits of the HTTP server, as the server uses them; the numbers are stated once, in the
`serve.limits` config schema (`anima.config.serve.ServeLimitsConfig`). Kept free of FastAPI."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from anima.config.serve import ServeLimitsConfig

_DEFAULTS = ServeLimitsConfig()


@dataclass(frozen=True)
class ServeLimits:
    """Per-request limits (anything above them is answered 4xx before any decoding starts) and the load limits."""

    max_body_bytes: int = _DEFAULTS.max_body_bytes
    max_messages: int = _DEFAULTS.max_messages
    max_tokens: int = _DEFAULTS.max_tokens  # upper bound for max_tokens / max_completion_tokens / num_predict
    max_prompt_chars: int = _DEFAULTS.max_prompt_chars  # over all messages (or the completion prompt)
    max_stop: int = _DEFAULTS.max_stop
    max_batch: int = _DEFAULTS.max_batch  # requests decoded together
    max_queue: int = _DEFAULTS.max_queue  # requests waiting for a slot; beyond: 503 + Retry-After
    request_timeout_s: float = _DEFAULTS.request_timeout_s  # 0 = none

    @property
    def capacity(self) -> int:
        """Requests in the engine at once (decoding + waiting)."""
        return self.max_batch + self.max_queue

    @classmethod
    def from_config(cls, limits: Any) -> "ServeLimits":
        """The ``serve.limits`` config group (DictConfig or ServeLimitsConfig) as limits."""
        return cls(**{f.name: (float if f.type in (float, "float") else int)(getattr(limits, f.name))
                      for f in fields(cls)})
