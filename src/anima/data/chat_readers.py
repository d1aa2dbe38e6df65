"""Chat source readers (jsonl_chat/synth, sharegpt, alpaca, qa, chatterbot, persona_pairs, feedback): each
streams `Raw` records with `messages`, or `Bad` markers naming file:line (see `anima.data.records`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from anima.data.files import iter_json, read_lines, resolve_files
from anima.data.records import Bad, Raw, RecordStream, to_messages
from anima.errors import ConfigError, DataError


def _json_records(files: list[Path], parse: Callable[[Path, str, Any], Raw | Bad]) -> RecordStream:
    """Every JSON record of `files` through `parse` (file, where, object); malformed JSON passes through as Bad."""
    for path in files:
        for item in iter_json(path):
            yield item if isinstance(item, Bad) else parse(path, *item)


def read_jsonl_chat(files: list[Path]) -> RecordStream:
    """`[{"role","content"}...]` or `{"messages": [...], "domain"?: ...}` per line (or a .json array)."""
    return _json_records(files, _jsonl_chat_record)


def _jsonl_chat_record(path: Path, where: str, obj: Any) -> Raw | Bad:
    domain, extra = "", {}
    if isinstance(obj, dict):
        if "messages" not in obj:
            return Bad(where, "expected a list of messages or an object with 'messages'")
        domain = str(obj.get("domain") or "")
        extra = {"id": obj["id"]} if "id" in obj else {}
        obj = obj["messages"]
    msgs = to_messages(obj, where)
    return msgs if isinstance(msgs, Bad) else Raw(where, messages=msgs, domain=domain, doc=path.stem, extra=extra)


def read_jsonl_chats(path: Path | str) -> list[dict]:
    """A whole chat JSONL file as examples ``{"id", "messages"}`` (the file's own ids, else ``<stem>-<n>``),
    failing on its first malformed record: for files a run reads directly (teacher pairs, a persona seed set)."""
    path = Path(path)
    out = []
    for n, record in enumerate(read_jsonl_chat([path]), 1):
        if isinstance(record, Bad):
            raise DataError(record.message())
        out.append({"id": record.extra.get("id", f"{path.stem}-{n}"), "messages": record.messages})
    return out


def read_sharegpt(files: list[Path]) -> RecordStream:
    """ShareGPT: `{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}], "system"?: ...}`."""
    return _json_records(files, _sharegpt_record)


def _sharegpt_record(path: Path, where: str, obj: Any) -> Raw | Bad:
    if not isinstance(obj, dict) or "conversations" not in obj:
        return Bad(where, "expected an object with 'conversations' (ShareGPT)")
    msgs = to_messages(obj["conversations"], where, role_key="from", content_key="value")
    if isinstance(msgs, Bad):
        return msgs
    if isinstance(obj.get("system"), str) and obj["system"].strip():
        msgs = [{"role": "system", "content": obj["system"]}, *msgs]
    return Raw(where, messages=msgs, domain=str(obj.get("domain") or ""), doc=path.stem)


def read_alpaca(files: list[Path]) -> RecordStream:
    """Alpaca: instruction (+ input, joined by a blank line) -> user; output -> assistant.
    Optional "system" and "history" ([[user, assistant], ...], LLaMA-Factory style) come first."""
    return _json_records(files, _alpaca_record)


def _alpaca_record(path: Path, where: str, obj: Any) -> Raw | Bad:
    if not isinstance(obj, dict):
        return Bad(where, "expected an object with 'instruction' and 'output' (Alpaca)")
    missing = [k for k in ("instruction", "output") if not isinstance(obj.get(k), str)]
    if missing:
        return Bad(where, f"missing or non-string {', '.join(repr(k) for k in missing)} (Alpaca)")
    user = obj["instruction"]
    if isinstance(obj.get("input"), str) and obj["input"].strip():
        user = f"{user}\n\n{obj['input']}"
    msgs: list[dict] = []
    if isinstance(obj.get("system"), str) and obj["system"].strip():
        msgs.append({"role": "system", "content": obj["system"]})
    history = obj.get("history") or []
    if not isinstance(history, list) or not all(
        isinstance(h, list) and len(h) == 2 and all(isinstance(x, str) for x in h) for h in history
    ):
        return Bad(where, "'history' must be a list of [user, assistant] string pairs")
    for u, a in history:
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": obj["output"]}]
    return Raw(where, messages=msgs, domain=str(obj.get("domain") or ""), doc=path.stem)


def read_qa(files: list[Path]) -> RecordStream:
    """Blocks of `Q: ...` / `A: ...` lines separated by blank lines; a line without a prefix continues the
    previous turn. A block must start with Q: and alternate; a block that ends on a question is Bad."""
    for path in files:
        block: list[tuple[int, str]] = []

        def flush(block: list[tuple[int, str]]) -> Raw | Bad | None:
            if not block:
                return None
            where = f"{path}:{block[0][0]}"
            msgs: list[dict] = []
            for n, line in block:
                head = line[:2].upper()
                if head in ("Q:", "A:"):
                    role = "user" if head == "Q:" else "assistant"
                    expected = "user" if not msgs or msgs[-1]["role"] == "assistant" else "assistant"
                    if role != expected:
                        return Bad(f"{path}:{n}", f"expected {'Q:' if expected == 'user' else 'A:'} here")
                    msgs.append({"role": role, "content": line[2:].strip()})
                elif not msgs:
                    return Bad(f"{path}:{n}", "a Q/A block must start with 'Q:'")
                else:
                    msgs[-1]["content"] += "\n" + line.strip()
            if msgs[-1]["role"] != "assistant":
                return Bad(f"{path}:{block[-1][0]}", "question without an answer ('A:' line)")
            return Raw(where, messages=msgs, doc=path.stem)

        for n, line in read_lines(path):
            if line is None:
                yield Bad(f"{path}:{n}", "not UTF-8 text")
                continue
            if line.strip():
                block.append((n, line.rstrip("\n")))
                continue
            out = flush(block)
            block = []
            if out is not None:
                yield out
        out = flush(block)
        if out is not None:
            yield out


def read_chatterbot(path: str, key: str, categories: list[str] | None) -> RecordStream:
    """chatterbot-corpus YAML (a file, a folder or a glob); the file stem is the domain."""
    from anima.data.chatterbot import read_chatterbot_yaml

    files = resolve_files(path, key, (".yml", ".yaml"))
    if categories:
        want = {c.lower() for c in categories}
        known = {f.stem.lower() for f in files}
        unknown = sorted(want - known)
        if unknown:
            raise ConfigError(f"{key.rsplit('.', 1)[0]}.categories: unknown {', '.join(unknown)}; "
                              f"available: {', '.join(sorted(known))}")
        files = [f for f in files if f.stem.lower() in want]
    for f in files:
        try:
            convs = read_chatterbot_yaml(f)
        except DataError as e:
            yield Bad(str(f), str(e).split(": ", 1)[-1])
            continue
        for i, conv in enumerate(convs):
            yield Raw(f"{f}[{i}]", messages=conv["messages"], domain=conv["domain"], doc=f.stem)


def read_persona_pairs(folder: str, key: str, character: str | None) -> RecordStream:
    """(previous speaker's speech -> character's reply) pairs; one scene is one split group."""
    from anima.data.plays import parse_play, persona_pairs

    if not character:
        raise ConfigError(f"{key.rsplit('.', 1)[0]}.character: kind=persona_pairs needs a character name")
    p = Path(folder)
    if not p.is_dir():
        raise DataError(f"{key}: {p} does not exist (run `anima data fetch`)")
    plays = [parse_play(f) for f in sorted(p.glob("*.md"))]
    if not plays:
        raise DataError(f"{key}: {p} holds no plays (*.md)")
    domain = "_".join(character.lower().split())
    scene_of: dict[tuple[str, str, str], str] = {}  # (play, cue, reply) -> "act/scene"
    for play in plays:
        for prev, sp in zip(play.speeches, play.speeches[1:]):
            scene_of.setdefault((play.slug, prev.text, sp.text), f"{sp.act}/{sp.scene}")
    for i, pair in enumerate(persona_pairs(plays, character)):
        cue, reply = pair["messages"][0]["content"], pair["messages"][1]["content"]
        group = f"{pair['play']}/{scene_of.get((pair['play'], cue, reply), '')}"
        yield Raw(f"{p}/{pair['play']}.md#pair{i}", messages=pair["messages"], domain=domain, doc=pair["play"],
                  group=group)


def read_feedback_file(path: str, key: str) -> RecordStream:
    """Approved replies and corrections of the chat feedback file; corrupt lines are Bad."""
    from anima.data.feedback import feedback_to_chat_examples, read_feedback

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{key}: {p} does not exist")
    records, corrupt = read_feedback(p)
    for i in range(corrupt):
        yield Bad(f"{p}", f"corrupt feedback line ({i + 1} of {corrupt})")
    for i, ex in enumerate(feedback_to_chat_examples(records)):
        yield Raw(f"{p}[{i}]", messages=ex["messages"], domain=f"feedback_{ex['rating']}", doc=p.stem)
