"""Plain-text documents for pretraining and tokenizer training, from a `data` config of kind text.

Documents are whole units (a play, a file) so validation can hold out entire documents.

Parsing the 38 demo plays costs ~0.5-1 s at every start-up; given a cache dir, the parsed corpus is kept as
`<cache>/corpus/<key>.json`, key = the sources' file names and bytes + the holdout + the parser code, so a
changed file, split or parser misses the cache (never mtimes).
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anima.atomic import PRIVATE, atomic_write_text
from anima.errors import DataError
from anima.fingerprint import hash_obj, hash_paths


@dataclass
class TextCorpus:
    train: dict[str, str]
    val: dict[str, str]
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    @property
    def fingerprint(self) -> str:
        """Content hash of both splits (names and text), independent of file paths and mtimes (computed once:
        hashing the demo corpus's 5 MB is read by the tokenizer and token caches alike)."""
        if self._fingerprint is None:
            self._fingerprint = hash_obj({"train": self.train, "val": self.val})
        return self._fingerprint

    def chars(self, split: str) -> int:
        return sum(len(t) for t in getattr(self, split).values())


def _ensure_demo(path: Path, raw_dir: Path) -> None:
    """The demo corpora are fetched on first use when a source points into the raw dir."""
    try:
        inside = path.resolve().is_relative_to(raw_dir.resolve())
    except OSError:
        inside = False
    if inside and not path.exists():
        from anima.data.demo import fetch_demo_data

        print(f"anima: fetching the demo corpora into {raw_dir} (once)")
        fetch_demo_data(raw_dir)


def _text_paths(pattern: str) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(pattern, recursive=True)) if any(c in pattern for c in "*?[") \
        else sorted(Path(pattern).rglob("*.txt")) if Path(pattern).is_dir() else [Path(pattern)]


def _read_text_files(pattern: str, name: str) -> dict[str, str]:
    paths = _text_paths(pattern)
    docs = {}
    for p in paths:
        if not p.is_file():
            raise DataError(f"data.sources.{name}.path: {p} does not exist")
        try:
            docs[p.stem] = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{p}: not UTF-8 text (byte {e.start})") from None
    return docs


def load_text_corpus(data_cfg: Any, raw_dir: str | Path, cache_dir: str | Path | None = None) -> TextCorpus:
    """Read every source of a kind=text data config; hold out `split.holdout` documents for validation.

    With `cache_dir`, a corpus parsed before from the same bytes is read back instead of parsed again."""
    for src in (data_cfg.sources or {}).values():
        _ensure_demo(Path(str(src.path)), Path(str(raw_dir)))
    key = _cache_key(data_cfg) if cache_dir is not None else None
    cached = Path(str(cache_dir)) / "corpus" / f"{key}.json" if key else None
    if cached is not None and cached.is_file():
        try:
            data = json.loads(cached.read_text(encoding="utf-8"))
            return TextCorpus(data["train"], data["val"], data["fingerprint"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable entry: parse again and rewrite it
    corpus = _load(data_cfg, raw_dir)
    if cached is not None:
        _write_json(cached, {"train": corpus.train, "val": corpus.val, "fingerprint": corpus.fingerprint})
    return corpus


def _cache_key(data_cfg: Any) -> str | None:
    """Hash of what the parsed corpus depends on; None when a source cannot be listed (the parse reports it)."""
    from anima.data import plays

    sources = []
    for name, src in (data_cfg.sources or {}).items():
        path = Path(str(src.path))
        if src.kind == "plays":
            files = sorted(path.glob("*.md")) if path.is_dir() else []
        elif src.kind == "text":
            files = _text_paths(str(path))
        else:
            return None
        if not files or not all(f.is_file() for f in files):
            return None
        try:
            sources.append([str(name), str(src.kind), hash_paths(files, length=32)])
        except OSError:
            return None
    code = hash_paths([Path(__file__), Path(plays.__file__)], length=32)
    return hash_obj({"sources": sources, "holdout": [str(h) for h in data_cfg.split.holdout or []],
                     "code": code}, length=32)


def _write_json(path: Path, data: dict) -> None:
    """Written to a temp file and renamed: a concurrent reader sees the whole entry or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write_text(path, json.dumps(data, ensure_ascii=False), mode=PRIVATE)
    except OSError:
        pass  # a read-only cache only costs the parse next time


def _load(data_cfg: Any, raw_dir: str | Path) -> TextCorpus:
    holdout = list(data_cfg.split.holdout or [])
    train: dict[str, str] = {}
    val: dict[str, str] = {}
    if not data_cfg.sources:
        raise DataError(f"data={data_cfg.name}: no sources configured (data.sources is empty)")
    for name, src in data_cfg.sources.items():
        path = Path(str(src.path))
        _ensure_demo(path, Path(str(raw_dir)))
        if src.kind == "plays":
            from anima.data.plays import load_corpus

            if not path.is_dir():
                raise DataError(f"data.sources.{name}.path: {path} does not exist (run `anima data fetch`)")
            tr, va = load_corpus(path, holdout)
            train.update(tr)
            val.update(va)
        elif src.kind == "text":
            docs = _read_text_files(str(path), name)
            for doc, text in docs.items():
                (val if doc in holdout else train)[doc] = text
        else:
            raise DataError(f"data.sources.{name}.kind={src.kind}: not a plain-text source (use plays or text)")
    train = {k: v for k, v in train.items() if v.strip()}
    if not train:
        raise DataError(f"data={data_cfg.name}: the training corpus is empty")
    if not val:
        raise DataError(f"data={data_cfg.name}: no validation text; set data.split.holdout to document names")
    return TextCorpus(train, val)
