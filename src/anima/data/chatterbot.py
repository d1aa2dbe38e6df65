"""Read chatterbot-corpus YAML files into user/assistant conversations tagged with a domain.

A chatterbot file looks like::

    categories:
    - AI
    - artificial intelligence
    conversations:
    - - What is AI?                  <- user
      - Artificial Intelligence is   <- assistant (turns alternate from here on)

Domain choice: the file stem ("ai", "botprofile", "tech_support"). The ``categories`` labels are free
text and do not name files consistently ("AI", "profile", "tech support"), while data-mix weights need
keys that a user can see by listing the folder; ``categories[0]`` is the domain only with
``domain_from="category"``.

Scalars are read with YAML's BaseLoader, so every value stays the exact string written ("yes", "1.0",
"null" are text in a chat corpus, never booleans or numbers). A conversation is trimmed to end on an
assistant turn (a trailing unanswered user line is dropped); one with fewer than two turns is skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypedDict

from anima.errors import DataError


class Message(TypedDict):
    role: str
    content: str


class Conversation(TypedDict):
    messages: list[Message]
    domain: str


def _loader():  # the C loader when PyYAML was built with libyaml; same results, faster
    import yaml

    return getattr(yaml, "CBaseLoader", yaml.BaseLoader)


def read_chatterbot_yaml(
    path: Path, domain_from: Literal["stem", "category"] = "stem"
) -> list[Conversation]:
    """Conversations of one chatterbot YAML file; DataError names the file (and line) when malformed."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read chatterbot file ({exc})") from None
    try:
        doc = yaml.load(text, Loader=_loader())  # noqa: S506 - BaseLoader builds only str/list/dict
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise DataError(f"{where}: malformed YAML ({problem})") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a mapping with a 'conversations' list at the top level")
    convs = doc.get("conversations")
    if not isinstance(convs, list):
        raise DataError(f"{path}: key 'conversations' must be a list of lists of strings")
    domain = path.stem.lower()
    if domain_from == "category":
        cats = doc.get("categories")
        if isinstance(cats, list) and cats and isinstance(cats[0], str) and cats[0].strip():
            domain = cats[0].strip()
    out: list[Conversation] = []
    for i, conv in enumerate(convs):
        if isinstance(conv, str):  # a lone string: a question with no answer
            continue
        if not isinstance(conv, list) or not all(isinstance(t, str) for t in conv):
            raise DataError(f"{path}: conversations[{i}] must be a list of strings, got {_short(conv)}")
        turns = [t.strip() for t in conv]  # inner newlines matter (code blocks in coding.yml)
        if any(not t for t in turns):
            raise DataError(f"{path}: conversations[{i}] has an empty turn: {_short(conv)}")
        turns = turns[: len(turns) // 2 * 2]
        if not turns:
            continue
        messages: list[Message] = [
            {"role": "user" if j % 2 == 0 else "assistant", "content": t} for j, t in enumerate(turns)
        ]
        out.append({"messages": messages, "domain": domain})
    return out


def load_chatterbot(folder: Path, domain_from: Literal["stem", "category"] = "stem") -> list[Conversation]:
    """Conversations of every ``*.yml``/``*.yaml`` file in ``folder`` (sorted by file name)."""
    folder = Path(folder)
    files = sorted([*folder.glob("*.yml"), *folder.glob("*.yaml")]) if folder.is_dir() else []
    if not files:
        raise DataError(
            f"{folder}: no chatterbot YAML files found; fetch them with "
            "anima.data.demo.fetch_demo_data(<raw dir>)"
        )
    return [c for f in files for c in read_chatterbot_yaml(f, domain_from=domain_from)]


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
