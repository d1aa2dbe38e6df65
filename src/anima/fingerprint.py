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


# (resolved path, size, mtime_ns) -> sha256 of the file's bytes: a file is read once per process, however many
# steps name it; an edit changes size or mtime_ns and so misses the memo (the hash itself is by content).
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """Full sha256 of a file's bytes, memoised in-process per (path, size, mtime_ns)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    digest = _FILE_DIGESTS.get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        digest = _FILE_DIGESTS[key] = h.hexdigest()
    return digest


def tree_files(path: Path) -> list[Path]:
    """The files under a directory that make up its content (hidden files and folders left out), sorted."""
    return sorted(f for f in path.rglob("*") if f.is_file()
                  and not any(part.startswith(".") for part in f.relative_to(path).parts)
                  and "__pycache__" not in f.parts)


def hash_paths(files: Iterable[Path], root: Path | None = None, length: int = 16) -> str:
    """Content hash of a set of files: their names (relative to `root`) and bytes, never mtimes or location."""
    h = hashlib.sha256()
    for f in sorted(Path(p) for p in files):
        name = str(f.relative_to(root)) if root else f.name
        h.update(name.encode() + b"\0" + file_digest(f).encode() + b"\0")
    return h.hexdigest()[:length]


def hash_tree(path: Path, length: int = 16) -> str:
    """Content hash of a file or of everything in a directory (a model dir, a tokenizer dir, a corpus)."""
    path = Path(path)
    if path.is_dir():
        return hash_paths(tree_files(path), root=path, length=length)
    return file_digest(path)[:length]
