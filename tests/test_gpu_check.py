"""scripts/gpu_check.sh without a GPU: it refuses at once, and every anima command in it composes."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _run(args: list[str], work: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "WORK": str(work), **env})


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine runs the real check")
def test_refuses_at_once_without_a_gpu(tmp_path):
    proc = _run([], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "gpu_check: no NVIDIA GPU here (nvidia-smi not found); run this on a machine with one CUDA GPU, or use "
        "--compose-only"]
    assert not list(tmp_path.iterdir())  # nothing was trained or written


@pytest.mark.slow
def test_every_command_composes(tmp_path):
    proc = _run(["--compose-only"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    steps = [ln.split(": ", 1)[1] for ln in proc.stdout.splitlines() if ln.startswith("composes: ")]
    assert steps == ["pretrain tiny", "pretrain small", "sft lora", "sft qlora", "distill", "eval", "merge", "export",
                     "serve"]
