"""A source's files and their contents as a stream: glob/folder/file resolution, lines, JSON records.

Shared by the text and chat readers; nothing here loads a whole file except a `.json` array.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any, Iterable, Iterator

from anima.data.records import Bad
from anima.errors import ConfigError, DataError


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


def read_lines(path: Path) -> Iterator[tuple[int, str | None]]:
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
    for n, line in read_lines(path):
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
