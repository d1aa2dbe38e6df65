"""Append-only feedback store (data/feedback.jsonl) and the corrections lookup built from it.

Why this shape: several processes (two chat windows, a server, ``anima retrain`` reading) may touch the file
at once, and a half-written or truncated file would silently lose what users taught the model. So every
record is one JSON line written with a single ``write`` of the whole line, then flushed and fsync'ed, under an
exclusive ``fcntl`` lock; the file is opened ``O_APPEND`` and never truncated. Each append opens its own file
descriptor, so the lock also serializes threads of one process (the server's request threads): ``flock`` locks
belong to the open file description, not the process. Every writer (``anima chat``, the chat page and
``POST /v1/feedback`` of ``anima serve``) goes through ``make_record`` + ``append_feedback``: one format.
Readers skip (and count) lines that do not parse, e.g. a line cut by a crash or a hand edit, instead of failing.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from anima.errors import DataError

RATINGS = ("up", "down")
ROLES = ("system", "user", "assistant")


@dataclass
class FeedbackRecord:
    """One rated reply. ``correction`` is the user's better reply (rating ``down``), None for approvals."""

    prompt: list[dict[str, str]]  # the conversation up to and including the user turn that was answered
    reply: str  # what the model said
    rating: str  # "up" | "down"
    correction: str | None = None
    model: str = ""  # model URI (models:/name@alias, models:/name/3, runs:/..., or a dir)
    model_version: str | None = None  # registry version the URI resolved to, when known
    sampling: dict[str, Any] = field(default_factory=dict)
    timestamp: str = ""  # ISO 8601, UTC

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _sampling_dict(sampling: Any) -> dict[str, Any]:
    if sampling is None:
        return {}
    if is_dataclass(sampling) and not isinstance(sampling, type):
        return asdict(sampling)
    if isinstance(sampling, Mapping):
        return dict(sampling)
    raise TypeError(f"sampling must be a dataclass or a mapping, got {type(sampling).__name__}")


def make_record(
    prompt: list[dict[str, str]],
    reply: str,
    rating: str,
    *,
    correction: str | None = None,
    model: str = "",
    model_version: str | None = None,
    sampling: Any = None,
) -> FeedbackRecord:
    """Build a validated record stamped with the current UTC time."""
    rec = FeedbackRecord(
        prompt=[{"role": str(m["role"]), "content": str(m["content"])} for m in prompt],
        reply=reply,
        rating=rating,
        correction=correction if correction else None,
        model=model,
        model_version=None if model_version is None else str(model_version),
        sampling=_sampling_dict(sampling),
        timestamp=_now_iso(),
    )
    problem = _record_problem(rec.to_json())
    if problem:
        raise ValueError(f"invalid feedback record: {problem}")
    return rec


def _record_problem(obj: Any) -> str | None:
    """Why ``obj`` is not a usable feedback record, or None when it is."""
    if not isinstance(obj, dict):
        return "not a JSON object"
    prompt = obj.get("prompt")
    if not isinstance(prompt, list) or not prompt:
        return "'prompt' must be a non-empty list of messages"
    for m in prompt:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            return "each prompt message needs a role (system/user/assistant) and string content"
    if not isinstance(obj.get("reply"), str):
        return "'reply' must be a string"
    if obj.get("rating") not in RATINGS:
        return f"'rating' must be one of {RATINGS}"
    corr = obj.get("correction")
    if corr is not None and not isinstance(corr, str):
        return "'correction' must be a string or null"
    if obj["rating"] == "up" and corr:
        return "an approved ('up') record cannot carry a correction"
    return None


def append_feedback(path: str | os.PathLike, record: FeedbackRecord | Mapping[str, Any]) -> None:
    """Append one record as one line: single write, flush, fsync, under an exclusive lock; never truncates.

    If a previous writer crashed mid-line (the file does not end with a newline), the new line is started on
    a fresh line so it stays parseable; the broken fragment is later skipped and counted by readers.
    """
    obj = record.to_json() if isinstance(record, FeedbackRecord) else dict(record)
    problem = _record_problem(obj)
    if problem:
        raise ValueError(f"invalid feedback record: {problem}")
    line = (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            size = os.fstat(fd).st_size
            if size > 0:
                with open(path, "rb") as r:  # read-only peek at the last byte
                    r.seek(size - 1)
                    if r.read(1) != b"\n":
                        line = b"\n" + line
            written = os.write(fd, line)
            while written < len(line):  # a short write is rare (disk full, signals); finish the line
                written += os.write(fd, line[written:])
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def read_feedback(path: str | os.PathLike) -> tuple[list[dict[str, Any]], int]:
    """All valid records in file order, and how many non-blank lines were corrupt (skipped).

    A missing file is an empty store. Reads under a shared lock so a concurrent append is never half-seen.
    """
    path = Path(path)
    if not path.exists():
        return [], 0
    if not path.is_file():
        raise DataError(f"feedback path is not a file: {path}")
    records: list[dict[str, Any]] = []
    corrupt = 0
    with open(path, "rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_SH)
        try:
            data = f.read()
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            corrupt += 1
            continue
        if _record_problem(obj) is not None:
            corrupt += 1
            continue
        records.append(obj)
    return records, corrupt


def feedback_to_chat_examples(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Turn approved and corrected records into chat training examples (``{"messages": [...]}``).

    Approved: prompt + the model's reply. Corrected: prompt + the user's correction. A ``down`` record without
    a correction teaches nothing and is dropped. Used by ``anima retrain`` as a data source.
    """
    out = []
    for r in records:
        if r.get("rating") == "up":
            answer = r["reply"]
        elif r.get("correction"):
            answer = r["correction"]
        else:
            continue
        msgs = [{"role": m["role"], "content": m["content"]} for m in r["prompt"]]
        msgs.append({"role": "assistant", "content": answer})
        out.append({"messages": msgs, "source": "feedback", "rating": r["rating"]})
    return out


_WS = re.compile(r"\s+")


def normalize_prompt(text: str) -> str:
    """Key for the corrections lookup: NFKC, casefold, whitespace collapsed, trailing punctuation stripped.

    So "What's your name?" and "  what's YOUR   name " hit the same correction.
    """
    s = unicodedata.normalize("NFKC", text).casefold()
    s = _WS.sub(" ", s).strip()
    end = len(s)
    while end > 0 and (unicodedata.category(s[end - 1]).startswith("P") or s[end - 1].isspace()):
        end -= 1
    return s[:end]


def _last_user_text(prompt: Any) -> str | None:
    if isinstance(prompt, str):
        return prompt
    for m in reversed(prompt or []):
        if isinstance(m, Mapping) and m.get("role") == "user":
            return str(m.get("content", ""))
    return None


class CorrectionIndex:
    """Corrections keyed by the normalized last user message; consulted before the model is asked.

    The latest correction for a key wins (a user may correct a correction).
    """

    def __init__(self) -> None:
        self._map: dict[str, str] = {}

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> "CorrectionIndex":
        idx = cls()
        for r in records:
            if r.get("correction"):
                idx.add(r["prompt"], r["correction"])
        return idx

    @classmethod
    def load(cls, path: str | os.PathLike) -> tuple["CorrectionIndex", int]:
        """Index of the file at ``path`` and its count of corrupt lines."""
        records, corrupt = read_feedback(path)
        return cls.from_records(records), corrupt

    def add(self, prompt: str | list[Mapping[str, Any]], correction: str) -> None:
        """``prompt`` is the user text or a message list (its last user message is the key)."""
        text = _last_user_text(prompt)
        if text is None or not correction:
            return
        key = normalize_prompt(text)
        if key:
            self._map[key] = correction

    def lookup(self, prompt: str | list[Mapping[str, Any]]) -> str | None:
        text = _last_user_text(prompt)
        if text is None:
            return None
        key = normalize_prompt(text)
        return self._map.get(key) if key else None

    def __len__(self) -> int:
        return len(self._map)

    def __contains__(self, prompt: object) -> bool:
        return isinstance(prompt, (str, list)) and self.lookup(prompt) is not None

