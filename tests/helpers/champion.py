"""A real champion for the chat/serve/synth/export/retrain stage tests: a nano model pretrained through the
real pretrain stage on the real plays, registered as models:/anima-tiny/1 and aliased @champion, so every
stage runs with its defaults (models:/<registry.name>@champion). Built once per pytest process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import NANO_FAST, compose_cfg

_CACHE: dict[str, tuple[Path, str]] = {}


def champion_project(tmp_path_factory, raw_dir: Path) -> tuple[Path, str]:
    """(project root, run id of the champion). Sets ANIMA_ROOT to the root while building."""
    if "root" not in _CACHE:
        import torch
        from mlflow import MlflowClient

        from anima.stages.train import train

        torch.set_num_threads(1)
        root = tmp_path_factory.mktemp("champion")
        old = os.environ.get("ANIMA_ROOT")
        os.environ["ANIMA_ROOT"] = str(root)
        try:
            cfg = compose_cfg("pretrain", [*NANO_FAST, "trainer.max_steps=4", "registry.name=anima-tiny"], raw_dir)
            result = train(cfg)
            MlflowClient().set_registered_model_alias("anima-tiny", "champion", result.version)
        finally:
            if old is None:
                os.environ.pop("ANIMA_ROOT", None)
            else:
                os.environ["ANIMA_ROOT"] = old
        _CACHE["root"] = (root, result.run_id)
    return _CACHE["root"]


def anima(root: Path, *args: str, input: str | None = None, timeout: float = 300,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m anima <args>` in a child process with ANIMA_ROOT=root (the real CLI, real stdin)."""
    full_env = {**os.environ, "ANIMA_ROOT": str(root), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "anima", *args], input=input, capture_output=True, text=True,
                          env=full_env, timeout=timeout)
