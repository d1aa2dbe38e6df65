"""Atomic file writes: write a hidden temp file beside the target, then rename it over the target.

A reader (or a process killed mid-write) sees the old file or the new one, never half of one: the temp file is
on the same filesystem, so `os.replace` is atomic. On failure the temp file is removed.
"""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

#: File modes for `mode=`: readable by everyone, or owner-only (what `tempfile.mkstemp` creates).
SHARED, PRIVATE = 0o644, 0o600


def temp_sibling(path: Path, suffix: str = ".tmp") -> Path:
    """A fresh hidden name beside `path` (pid + random, so concurrent writers never share one)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")


def fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` survive a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, *, tmp: Path | None = None, mode: int | None = None,
                sync_dir: bool = False) -> Iterator[Path]:
    """Yield a temp path to write `path` through; it replaces `path` when the block succeeds.

    tmp: the temp name to use (default `temp_sibling(path)`); it must be in `path`'s folder.
    mode: chmod the file to this before the rename (None: as the umask made it).
    sync_dir: fsync the folder after the rename (the caller fsyncs the file it wrote).
    The parent folder must exist.
    """
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else temp_sibling(path)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if sync_dir:
        fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mode: int | None = None) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    with atomic_path(path, mode=mode) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, *, mode: int | None = None,
                      encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically; returns the path."""
    with atomic_path(path, mode=mode) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)
