"""Where the project's files live: the project root holds conf/, data/, mlruns/, experiments/."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_ROOT = PACKAGE_DIR.parent.parent


def project_root() -> Path:
    """The directory that holds data/, mlruns/ and experiments/.

    ``ANIMA_ROOT`` wins (tests point it at a temp dir); otherwise the checkout anima is installed from
    (editable install), else the current directory.
    """
    env = os.environ.get("ANIMA_ROOT")
    if env:
        return Path(env).expanduser().resolve()
    if (SOURCE_ROOT / "conf").is_dir() and (SOURCE_ROOT / "pyproject.toml").is_file():
        return SOURCE_ROOT
    return Path.cwd()


def conf_dir() -> Path:
    """The Hydra config directory shipped with the checkout."""
    return SOURCE_ROOT / "conf"


def user_conf_dir() -> Path:
    """The user's own configs (data mixes, experiments, models, generated sweep presets), git-ignored.

    On Hydra's search path ahead of the shipped `conf/`, so users extend anima without editing tracked files.
    ``ANIMA_USER_CONF`` moves it; the default is `<project root>/conf.local`.
    """
    env = os.environ.get("ANIMA_USER_CONF")
    if env:
        return Path(env).expanduser().resolve()
    return project_root() / "conf.local"
