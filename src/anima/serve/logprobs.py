"""Per-token log-probabilities in OpenAI's two shapes: chat's ``{"content": [...]}`` and the legacy
completions' ``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}``.

Entries are the engine's TokenLogprob (id, text, bytes, logprob, top alternatives); their values are the
model's own distribution, before penalties, temperature and top-k/top-p (as vLLM reports by default).
"""

from __future__ import annotations

from typing import Any


def _entry(t: Any) -> dict[str, Any]:
    return {"token": t.text, "logprob": t.logprob, "bytes": list(t.bytes)}


def chat_logprobs(entries: list[Any] | None) -> dict[str, Any] | None:
    """A chat choice's (or chunk's) ``logprobs``: None when they were not asked for."""
    if entries is None:
        return None
    return {"content": [{**_entry(t), "top_logprobs": [_entry(a) for a in t.top]} for t in entries],
            "refusal": None}


class CompletionLogprobs:
    """The legacy shape, chunk by chunk: ``text_offset`` runs on from the end of the prompt across chunks."""

    def __init__(self, offset: int) -> None:
        self.offset = offset

    def __call__(self, entries: list[Any] | None) -> dict[str, Any] | None:
        if entries is None:
            return None
        offsets = []
        for t in entries:
            offsets.append(self.offset)
            self.offset += len(t.text)
        return {"tokens": [t.text for t in entries], "token_logprobs": [t.logprob for t in entries],
                "top_logprobs": [{**{a.text: a.logprob for a in t.top}, t.text: t.logprob} for t in entries],
                "text_offset": offsets}
