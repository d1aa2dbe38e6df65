"""Export a built chat dataset for other tools: ShareGPT, Alpaca, ChatML JSONL and Q/A text.

Every format reads back with the matching anima reader (sharegpt, alpaca, jsonl_chat for chatml's
"messages", qa), so an export is also a way to move data between anima projects.

- sharegpt: {"id", "conversations": [{"from": "system"|"human"|"gpt", "value"}]}
- alpaca:   {"instruction": last user turn, "input": "", "output": last assistant turn,
             "system"?: ..., "history": [[user, assistant], ...] for earlier turns (LLaMA-Factory style)}
- chatml:   {"id", "text": "<|im_start|>user\\n...<|im_end|>\\n...", "messages": [...]}
- qa:       "Q: ...\\nA: ...\\n\\n" blocks (system turns dropped; blank lines inside a turn collapsed,
            since a blank line ends a block)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

from anima.atomic import SHARED, atomic_path
from anima.errors import DataError

FORMATS = ("sharegpt", "alpaca", "chatml", "qa")
EXT = {"sharegpt": "jsonl", "alpaca": "jsonl", "chatml": "jsonl", "qa": "txt"}
_FROM = {"system": "system", "user": "human", "assistant": "gpt"}


def to_sharegpt(ex: dict) -> dict:
    return {"id": ex["id"], "conversations": [{"from": _FROM[m["role"]], "value": m["content"]}
                                               for m in ex["messages"]]}


def to_alpaca(ex: dict) -> dict:
    msgs = ex["messages"]
    system = [m["content"] for m in msgs if m["role"] == "system"]
    turns = [m for m in msgs if m["role"] != "system"]
    pairs = [(turns[i]["content"], turns[i + 1]["content"]) for i in range(0, len(turns) - 1, 2)]
    *history, (instruction, output) = pairs
    rec = {"instruction": instruction, "input": "", "output": output}
    if system:
        rec["system"] = "\n".join(system)
    if history:
        rec["history"] = [list(p) for p in history]
    return rec


def to_chatml(ex: dict) -> dict:
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in ex["messages"])
    return {"id": ex["id"], "text": text, "messages": ex["messages"]}


_BLANK = re.compile(r"\n\s*\n+")


def to_qa(ex: dict) -> str:
    lines = []
    for m in ex["messages"]:
        if m["role"] == "system":
            continue
        content = _BLANK.sub("\n", m["content"]).strip()
        lines.append(f"{'Q' if m['role'] == 'user' else 'A'}: {content}")
    return "\n".join(lines) + "\n\n"


def _alternates(ex: dict) -> bool:
    turns = [m["role"] for m in ex["messages"] if m["role"] != "system"]
    return len(turns) >= 2 and len(turns) % 2 == 0 and all(
        r == ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(turns))


def write_export(examples: Iterable[dict], fmt: str, path: Path) -> int:
    """Write `examples` in `fmt` to `path` atomically; returns how many were written."""
    if fmt not in FORMATS:
        raise DataError(f"format={fmt!r} is not one of {', '.join(FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with atomic_path(path, mode=SHARED) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for ex in examples:
            if "messages" not in ex:
                raise DataError(f"export format={fmt}: the dataset holds text, not conversations")
            if fmt in ("alpaca", "qa") and not _alternates(ex):
                continue  # these formats can only say user/assistant alternations
            if fmt == "qa":
                fh.write(to_qa(ex))
            else:
                rec = {"sharegpt": to_sharegpt, "alpaca": to_alpaca, "chatml": to_chatml}[fmt](ex)
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n
