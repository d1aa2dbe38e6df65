"""Plain-text documents for pretraining and tokenizer training, from a `data` config of kind text.

Documents are whole units (a play, a file) so validation can hold out entire documents.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anima.errors import DataError
from anima.fingerprint import hash_obj


@dataclass
class TextCorpus:
    train: dict[str, str]
    val: dict[str, str]

    @property
    def fingerprint(self) -> str:
        """Content hash of both splits (names and text), independent of file paths and mtimes."""
        return hash_obj({"train": self.train, "val": self.val})

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


def _read_text_files(pattern: str, name: str) -> dict[str, str]:
    paths = sorted(Path(p) for p in glob.glob(pattern, recursive=True)) if any(c in pattern for c in "*?[") \
        else sorted(Path(pattern).rglob("*.txt")) if Path(pattern).is_dir() else [Path(pattern)]
    docs = {}
    for p in paths:
        if not p.is_file():
            raise DataError(f"data.sources.{name}.path: {p} does not exist")
        try:
            docs[p.stem] = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{p}: not UTF-8 text (byte {e.start})") from None
    return docs


def load_text_corpus(data_cfg: Any, raw_dir: str | Path) -> TextCorpus:
    """Read every source of a kind=text data config; hold out `split.holdout` documents for validation."""
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
