"""Ask a teacher for a reply to every prompt and write the pairs as a JSONL chat dataset (atomically).

One line per successful prompt: ``{"messages": [..prompt.., {"role": "assistant", ...}], "source": "synth",
"teacher": <name>}`` -- the same chat format the data stage reads, so the file is usable as a data source.
A prompt whose request fails (after the client's own retries) or comes back empty is counted as a failure
and skipped; a refused key or a wrong endpoint aborts at once (every prompt would fail the same way).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from anima.atomic import PRIVATE, atomic_path
from anima.errors import AnimaError, DataError
from anima.generation.sampling import SamplingParams
from anima.synth.teachers import Messages, TeacherClient

ROLES = ("system", "user", "assistant")


@dataclass
class SynthResult:
    count: int  # examples written
    failures: int  # prompts that got no usable reply
    out_path: Path | None = None
    errors: list[str] = field(default_factory=list)  # first few failure messages, for the log


def _as_messages(prompt: Any, i: int, system_prompt: str | None) -> Messages:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise DataError(f"prompt {i} is empty")
        msgs = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, Sequence) and prompt and all(isinstance(m, dict) for m in prompt):
        msgs = []
        for j, m in enumerate(prompt):
            if m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise DataError(f"prompt {i} message {j} needs role in {ROLES} and string content, got {m!r:.80}")
            msgs.append({"role": m["role"], "content": m["content"]})
        if msgs[-1]["role"] == "assistant":  # a finished chat used as a prompt: ask for its last reply anew
            msgs = msgs[:-1]
        if not msgs or msgs[-1]["role"] != "user":
            raise DataError(f"prompt {i} must end with a user message")
    else:
        raise DataError(f"prompt {i} must be a string or a list of messages, got {type(prompt).__name__}")
    if system_prompt and msgs[0]["role"] != "system":
        msgs = [{"role": "system", "content": system_prompt}, *msgs]
    return msgs


def _for_prompt(params: SamplingParams, i: int) -> SamplingParams:
    """A seeded run gives prompt i the seed `seed + i`: reproducible, but not the same random draws for every
    prompt (which would make every reply start alike)."""
    return params if params.seed is None else replace(params, seed=params.seed + i)


def synthesize(
    prompts: Sequence[str] | Sequence[Messages],
    teacher: TeacherClient,
    params: SamplingParams,
    out_path: str | os.PathLike,
    *,
    system_prompt: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    max_errors_kept: int = 5,
) -> SynthResult:
    """Write one chat example per answered prompt to ``out_path`` (temp file + ``os.replace``)."""
    if not prompts:
        raise DataError("synthesis needs at least one prompt (synth.prompts is empty)")
    convs = [_as_messages(p, i, system_prompt) for i, p in enumerate(prompts)]  # validate all before asking
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    result = SynthResult(count=0, failures=0, out_path=out_path)
    with atomic_path(out_path, mode=PRIVATE) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for i, msgs in enumerate(convs):
            try:
                reply = teacher.reply(msgs, _for_prompt(params, i))
            except AnimaError:
                raise
            except Exception as e:  # noqa: BLE001 - one prompt failed; count it and go on
                result.failures += 1
                if len(result.errors) < max_errors_kept:
                    result.errors.append(f"prompt {i}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            else:
                if reply and reply.strip():
                    ex = {"messages": [*msgs, {"role": "assistant", "content": reply}],
                          "source": "synth", "teacher": teacher.name}
                    f.write(json.dumps(ex, ensure_ascii=False) + "\n")
                    result.count += 1
                else:
                    result.failures += 1
                    if len(result.errors) < max_errors_kept:
                        result.errors.append(f"prompt {i}: empty reply")
            if on_progress is not None:
                on_progress(i + 1, len(convs))
        f.flush()
        os.fsync(f.fileno())
    return result


def load_prompts(path: str | os.PathLike) -> list[str] | list[Messages]:
    """Prompts from a file: ``.txt`` one per non-blank line; ``.jsonl`` lines that are a string,
    ``{"prompt": str}`` or ``{"messages": [...]}`` (a chat dataset works: its last reply is re-asked);
    ``.json`` a list of those."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompt file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".txt":
        out: list[Any] = [line.strip() for line in text.splitlines() if line.strip()]
    elif path.suffix in (".jsonl", ".json"):
        if path.suffix == ".json":
            try:
                items = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: not valid JSON: {e}") from None
            if not isinstance(items, list):
                raise DataError(f"{path}: expected a JSON list of prompts")
            numbered = [(i + 1, it) for i, it in enumerate(items)]
        else:
            numbered = []
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    numbered.append((n, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{n}: not valid JSON: {e.msg}") from None
        out = []
        for n, it in numbered:
            if isinstance(it, str):
                out.append(it)
            elif isinstance(it, dict) and isinstance(it.get("prompt"), str):
                out.append(it["prompt"])
            elif isinstance(it, dict) and isinstance(it.get("messages"), list):
                out.append(it["messages"])
            else:
                raise DataError(f"{path}:{n}: expected a string, {{'prompt': str}} or {{'messages': [...]}}")
    else:
        raise DataError(f"{path}: unsupported prompt file type {path.suffix!r} (use .txt, .jsonl or .json)")
    if not out:
        raise DataError(f"{path}: no prompts in file")
    if any(isinstance(p, list) for p in out) and any(isinstance(p, str) for p in out):
        out = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in out]
    return out
