"""The atomic-write helper and the models:/ URI builder every write site and registry caller goes through."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from anima.atomic import PRIVATE, SHARED, atomic_path, atomic_write_bytes, atomic_write_text
from anima.tracking.registry import model_uri


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_write_replaces_the_file_with_the_mode_asked_for(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    target.write_text("old")
    assert atomic_write_text(target, "new ✓\n", mode=PRIVATE) == target
    assert target.read_text(encoding="utf-8") == "new ✓\n"
    assert stat.S_IMODE(target.stat().st_mode) == PRIVATE
    atomic_write_bytes(target, b"\x00\x01", mode=SHARED)
    assert target.read_bytes() == b"\x00\x01" and stat.S_IMODE(target.stat().st_mode) == SHARED
    assert _leftovers(tmp_path) == []


def test_a_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            assert tmp.parent == tmp_path and tmp.name.startswith(".a.txt.")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_a_fixed_temp_name_and_dir_sync(tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"
    with atomic_path(target, tmp=tmp_path / ".last.ckpt.tmp", sync_dir=True) as tmp:
        assert tmp.name == ".last.ckpt.tmp"
        tmp.write_bytes(b"ckpt")
    assert target.read_bytes() == b"ckpt" and _leftovers(tmp_path) == []


def test_model_uri() -> None:
    assert model_uri("anima-tiny", 3) == "models:/anima-tiny/3"
    assert model_uri("anima-tiny", "12") == "models:/anima-tiny/12"
    assert model_uri("anima-tiny", alias="champion") == "models:/anima-tiny@champion"
    with pytest.raises(ValueError):
        model_uri("anima-tiny")
    with pytest.raises(ValueError):
        model_uri("anima-tiny", 1, alias="champion")
