"""Plain helpers the tests (and the bench scripts) import: the test environment, skip-unless-available
(`require`), config composition as the CLI does it, and the nano smoke overrides.

Fixtures live in tests/conftest.py; the model builders in `tests.helpers.models` (a nano model dir),
`tests.helpers.registry` (three registered nano versions) and `tests.helpers.champion` (a registered
@champion for the stage tests)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

NANO_FAST = ["model=nano", "trainer=smoke", "tracking.log_checkpoints=false", "tracking.log_every_n_steps=1"]


def in_ci() -> bool:
    """CI=true (or 1/yes) in the environment: the machine is meant to have every external need of the suite."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require(ok: object, what: str) -> None:
    """Skip the test when an external need (demo data, PostgreSQL, a C++ compiler, a package) is missing --
    except under CI=true, where the machine has all of them: there a skip would hide a broken test, so it fails.

    `what` says what is missing and why, e.g. "demo data unavailable: <error>"."""
    if ok:
        return
    if in_ci():
        pytest.fail(f"CI=true but {what} (outside CI this test would be skipped; the CI machine must provide it)",
                    pytrace=False)
    pytest.skip(what)


def require_module(name: str) -> ModuleType:
    """`pytest.importorskip`, except that a missing package fails under CI=true (see `require`)."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        require(False, f"python package {name!r} cannot be imported ({e})")
        raise  # unreachable: require skips or fails


def demo_data(raw: Path) -> Path:
    """Fetch (once; free when already there) the demo corpora into `raw`, else skip -- or fail under CI=true."""
    from anima.data.demo import fetch_demo_data

    try:
        fetch_demo_data(raw)
    except Exception as e:  # offline machine, unreachable index
        require(False, f"demo data unavailable: {e}")
    return raw


def postgres_url() -> str:
    """The test PostgreSQL (ANIMA_TEST_POSTGRES_URL, default 127.0.0.1:5432 database `test`, trust auth) when it
    answers; else skip -- or fail under CI=true."""
    url = os.environ.get("ANIMA_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
    try:
        import psycopg2

        psycopg2.connect(url, connect_timeout=2).close()
    except Exception as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        require(False, f"PostgreSQL not reachable at {url}: {detail}")
    return url


def compose_cfg(stage: str, overrides: list[str], raw: Path | None = None):
    """Compose conf/<stage>.yaml exactly as `anima <stage> ...` would (schema + validation included)."""
    from anima.config.compose import compose

    extra = [f"paths.raw_dir={raw}"] if raw else []
    return compose(stage, [*extra, *overrides])  # validates, as the CLI does


def paths_under(root: Path, raw: Path | None = None):
    """Typed `paths` rooted at `root` (raw data from `raw`, default root/raw): what the data functions take,
    without composing a whole stage config."""
    from anima.config.groups import PathsConfig

    return PathsConfig(root=str(root), data_dir=str(root), raw_dir=str(raw or root / "raw"),
                       processed_dir=str(root / "processed"), cache_dir=str(root / "cache"),
                       experiments_dir=str(root / "experiments"))
