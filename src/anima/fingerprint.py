"""Content fingerprints: stable across copies and mtimes, so caches key on what data *is*."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

CHUNK = 1 << 20


def hash_bytes(data: bytes, length: int = 16) -> str:
    return hashlib.sha256(data).hexdigest()[:length]


def hash_obj(obj: Any, length: int = 16) -> str:
    """Hash a JSON-able object with sorted keys (config dicts, manifests)."""
    return hash_bytes(json.dumps(obj, sort_keys=True, default=str).encode(), length)


def hash_files(paths: Iterable[Path], root: Path | None = None, length: int = 16) -> str:
    """Hash file contents and their relative names (not mtimes), in sorted order."""
    h = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        name = str(path.relative_to(root)) if root else path.name
        h.update(name.encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()[:length]


def publish_dir(work: Path, final: Path) -> None:
    """Atomically move a finished cache entry into place. Content-addressed: if another process published the
    same fingerprint first, its copy is as good as ours, so keep it."""
    import os

    try:
        os.replace(work, final)
    except OSError:
        if not final.is_dir():
            raise
