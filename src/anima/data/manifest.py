"""Versioning: the dataset fingerprint, the on-disk layout, sharded writers and atomic publication.

Layout of one build::

    data/processed/<name>/<fingerprint>/
        manifest.json            sources (+ content hashes), weights, seed, counts in/out of every step
        train-00000.jsonl ...    shards of `shard_records` examples (also val-*, test-*)
    data/processed/<name>/latest the fingerprint most recently built or reused under that name

The fingerprint hashes what decides the content: every source's file contents (never paths or mtimes),
the data config minus locations, the pipeline version, the rehearsal dataset's fingerprint and the
reference model's canonical URI. Same inputs -> same fingerprint -> the saved build is reused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, TextIO

from anima.atomic import SHARED, atomic_write_text
from anima.fingerprint import hash_files, hash_obj

PIPELINE_VERSION = 1  # bump when a change to the code changes what a config builds


def source_content_hash(files: list[Path], descriptor: str) -> str:
    """Hash of a source's files (content + names relative to their common folder); a Hub name hashes itself."""
    if not files:
        return hash_obj({"remote": descriptor})
    root = Path(os.path.commonpath([str(f.parent) for f in files]))
    return hash_files(files, root=root)


def fingerprint(data_cfg: dict, source_hashes: dict[str, str], extras: dict[str, Any]) -> str:
    """The dataset's identity: config semantics + source contents + pipeline version + extras."""
    cfg = {k: v for k, v in data_cfg.items() if k not in ("name",)}
    sources = {}
    for name, src in (cfg.get("sources") or {}).items():
        sources[name] = {k: v for k, v in src.items() if k != "path"} | {"content": source_hashes[name]}
    cfg["sources"] = sources
    if not (cfg.get("rehearsal") or {}).get("ratio"):
        cfg.pop("rehearsal", None)
    return hash_obj({"v": PIPELINE_VERSION, "cfg": cfg, "extras": extras})


class ShardWriter:
    """Writes `<split>-NNNNN.jsonl` files of at most `per_shard` records each."""

    def __init__(self, folder: Path, split: str, per_shard: int):
        self.folder, self.split, self.per_shard = folder, split, per_shard
        self.count = 0
        self.shards: list[str] = []
        self._fh: TextIO | None = None

    def write(self, record: dict) -> None:
        if self._fh is None or self.count % self.per_shard == 0:
            self._open_next()
        assert self._fh is not None
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.count += 1

    def _open_next(self) -> None:
        if self._fh is not None:
            self._fh.close()
        name = f"{self.split}-{len(self.shards):05d}.jsonl"
        self.shards.append(name)
        self._fh = open(self.folder / name, "w", encoding="utf-8")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def shard_paths(folder: Path, split: str) -> list[Path]:
    return sorted(folder.glob(f"{split}-[0-9][0-9][0-9][0-9][0-9].jsonl"))


def iter_jsonl(paths: list[Path]) -> Iterator[dict]:
    for p in paths:
        with open(p, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)


def write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n", mode=SHARED)


def staging_dir(final: Path) -> Path:
    """A hidden sibling folder to build in; `publish` renames it into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
    os.chmod(tmp, 0o755)
    return tmp


def publish(tmp: Path, final: Path) -> None:
    """Rename the finished build into place; if another process published the same fingerprint first,
    keep theirs (same inputs, same content) and drop ours."""
    try:
        os.replace(tmp, final)
    except OSError:
        if (final / "manifest.json").is_file():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            raise


def set_latest(name_dir: Path, fp: str) -> None:
    name_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(name_dir / "latest", fp + "\n", mode=SHARED)


def get_latest(name_dir: Path) -> str | None:
    """The fingerprint of `latest`, else of the newest manifest; None when nothing is built."""
    p = name_dir / "latest"
    if p.is_file():
        fp = p.read_text().strip()
        if (name_dir / fp / "manifest.json").is_file():
            return fp
    builds = sorted(name_dir.glob("*/manifest.json"), key=lambda m: m.stat().st_mtime)
    return builds[-1].parent.name if builds else None
