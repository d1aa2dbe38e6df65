"""What readers yield: a raw record (chat messages or plain text) or a `Bad` marker naming file:line.

Readers never raise for a malformed *record*: they yield `Bad(where, reason)` and go on, so the build
decides (data.on_error=raise: one-line DataError; skip: count it in the manifest). Problems with the
whole source (missing file, unreadable YAML) still raise DataError at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Union

ROLES = ("system", "user", "assistant")
# Role names other formats use (ShareGPT "human"/"gpt", OpenAI-style "bot"/"model" are NOT guessed:
# only the spellings that tools really write are mapped; anything else is an error naming the line).
ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
}


@dataclass
class Raw:
    """One record as read: `messages` for chat sources, `text` for text sources."""

    where: str  # "file:line" (or "file[index]") for error messages
    messages: list[dict] | None = None
    text: str | None = None
    domain: str = ""
    doc: str = ""  # the document it comes from (play slug, file stem): `split.holdout` names these
    group: str = ""  # records of one group never straddle splits (e.g. one scene of a play)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Bad:
    """A malformed record: where it is and why (one line)."""

    where: str
    reason: str

    def message(self) -> str:
        return f"{self.where}: {self.reason}"


Item = Union[Raw, Bad]
RecordStream = Iterator[Item]


def to_messages(turns: Any, where: str, role_key: str = "role", content_key: str = "content") -> list[dict] | Bad:
    """Validate a list of turns into [{"role", "content"}]: unknown roles and empty lists are `Bad`."""
    if not isinstance(turns, list):
        return Bad(where, f"expected a list of messages, got {type(turns).__name__}")
    if not turns:
        return Bad(where, "empty conversation")
    out: list[dict] = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            return Bad(where, f"message {i} is not an object")
        role = t.get(role_key)
        mapped = ROLE_ALIASES.get(str(role).strip().lower()) if isinstance(role, str) else None
        if mapped is None:
            return Bad(where, f"unknown role {role!r} in message {i} (expected {', '.join(ROLES)})")
        content = t.get(content_key)
        if not isinstance(content, str):
            return Bad(where, f"message {i} ({mapped}): {content_key!r} must be a string")
        out.append({"role": mapped, "content": content})
    return out
