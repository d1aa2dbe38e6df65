"""Kill -9 proof: a real `anima pretrain` process killed with SIGKILL at several points (before its first
checkpoint, in the middle of a checkpoint write, mid-step) and continued with `resume=auto` each time ends
bit-for-bit equal to an uninterrupted run, as one MLflow run, FINISHED, with one registered version."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from anima.procs import pid_alive
from tests.helpers import NANO_FAST

pytestmark = pytest.mark.slow

DELAY_ENV = "ANIMA_TEST_CKPT_WRITE_DELAY"  # AtomicCheckpointIO pauses between writing the temp file and the rename
ARGS = [*NANO_FAST, "trainer.max_steps=24", "trainer.ckpt_every=4", "trainer.val_every=8", "optim.warmup_steps=4",
        "trainer.num_samples=0"]


def _start(project: Path, raw: Path, extra: list[str], delay: float = 0.0) -> tuple[subprocess.Popen, Path]:
    env = {**os.environ, "ANIMA_ROOT": str(project), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop(DELAY_ENV, None)
    if delay:
        env[DELAY_ENV] = str(delay)
    log = project / f"log-{time.time_ns()}.txt"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "anima", "pretrain", f"paths.raw_dir={raw}", *ARGS, *extra],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=project)
    return proc, log


def _wait_for(proc: subprocess.Popen, log: Path, what: str, cond, timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"anima exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.01)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL  # killed, not finished


def _finish(proc: subprocess.Popen, log: Path) -> None:
    assert proc.wait(600) == 0, log.read_text()[-3000:]


def _ckpt_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def _weights(run_id: str) -> dict[str, torch.Tensor]:
    import mlflow
    from safetensors.torch import load_file

    ckpt_dir = Path(mlflow.get_run(run_id).data.tags["anima.checkpoint_dir"])
    return load_file(str(ckpt_dir.parent / "model" / "model.safetensors"))


def _pretrain_runs() -> list:
    import mlflow

    return mlflow.search_runs(search_all_experiments=True, filter_string="tags.`anima.stage` = 'pretrain'",
                              output_format="list")


def test_sigkill_at_several_points_then_resume_auto_equals_an_uninterrupted_run(project, raw_dir):
    import mlflow

    ckpts = lambda: list(project.glob("experiments/pretrain/*/checkpoints"))  # noqa: E731
    # 1. killed while its first checkpoint (step 4) is being written: no last.ckpt yet
    proc, log = _start(project, raw_dir, [], delay=3.0)
    _wait_for(proc, log, "the first checkpoint write", lambda: any((d / ".last.ckpt.tmp").exists() for d in ckpts()))
    _kill(proc)
    (ckpt_dir,) = ckpts()
    assert not (ckpt_dir / "last.ckpt").exists()

    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    mlflow.set_registry_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    (run,) = _pretrain_runs()
    # the tracking helper that held the run (its pid tag) sees the trainer go and ends the run KILLED
    helper = int(run.data.tags["anima.pid"])
    deadline = time.monotonic() + 60
    while pid_alive(helper) and time.monotonic() < deadline:
        time.sleep(0.1)
    run = mlflow.get_run(run.info.run_id)
    assert run.info.status == "KILLED" and "is gone" in run.data.tags["anima.killed"]

    # 2. resume=auto restarts it from step 0 in the same run; killed again mid-write of the step-8 checkpoint
    proc, log = _start(project, raw_dir, ["resume=auto"], delay=2.0)
    last = ckpt_dir / "last.ckpt"
    _wait_for(proc, log, "the step-4 checkpoint", last.exists)
    _wait_for(proc, log, "the step-8 checkpoint write", (ckpt_dir / ".last.ckpt.tmp").exists)
    _kill(proc)
    assert _ckpt_step(last) == 4  # the previous checkpoint is intact and loads with weights_only=True

    # `anima status` looks at the store: the dead run is shown KILLED, not RUNNING
    status = subprocess.run([sys.executable, "-m", "anima", "status"], env={**os.environ, "ANIMA_ROOT": str(project)},
                            cwd=project, capture_output=True, text=True, timeout=300)
    assert status.returncode == 0, status.stderr[-2000:]
    assert mlflow.get_run(run.info.run_id).info.status == "KILLED"

    # 3. resumed from step 4; killed mid-step, shortly after the step-8 checkpoint landed
    inode = last.stat().st_ino
    proc, log = _start(project, raw_dir, ["resume=auto"])
    _wait_for(proc, log, "the step-8 checkpoint", lambda: last.stat().st_ino != inode)
    time.sleep(0.05)
    _kill(proc)
    assert _ckpt_step(last) == 8

    # a changed setting is refused before any work, in one line naming the key, exit 2
    proc, log = _start(project, raw_dir, ["resume=auto", "optim.lr=0.002"])
    assert proc.wait(300) == 2, log.read_text()[-3000:]
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    (line,) = [x for x in text.splitlines() if x.strip()]  # one line, no progress bars or log noise
    assert line.startswith(f"anima: error: resume=auto: run {run.info.run_id} was started with optim.lr=0.005, "
                           "not 0.002")
    assert _ckpt_step(last) == 8, text[-3000:]

    # 4. resumed again; runs to the end
    proc, log = _start(project, raw_dir, ["resume=auto"])
    _finish(proc, log)
    (resumed,) = _pretrain_runs()
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    versions = mlflow.MlflowClient().search_model_versions("name='anima-nano'")
    assert [v.run_id for v in versions] == [run.info.run_id]

    # the same command, never interrupted
    proc, log = _start(project, raw_dir, [])
    _finish(proc, log)
    full = next(r for r in _pretrain_runs() if r.info.run_id != run.info.run_id)
    a, b = _weights(full.info.run_id), _weights(run.info.run_id)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    final = mlflow.get_run(run.info.run_id).data.metrics
    assert final["val/loss"] == mlflow.get_run(full.info.run_id).data.metrics["val/loss"]


def test_ctrl_c_stops_between_steps_ends_killed_and_resume_auto_continues(project, raw_dir):
    """SIGINT mid-training: the step in flight finishes, the run ends KILLED (never 'database is locked'),
    exit 130; resume=auto continues the same run from its last checkpoint."""
    import mlflow

    proc, log = _start(project, raw_dir, ["trainer.max_steps=5000"])
    _wait_for(proc, log, "the first checkpoint", lambda: any(project.glob("experiments/pretrain/*/checkpoints/last.ckpt")))
    proc.send_signal(signal.SIGINT)
    assert proc.wait(120) == 130, log.read_text()[-3000:]
    text = log.read_text()
    assert "stopping after this step" in text and "anima: interrupted" in text, text[-3000:]
    assert "Traceback" not in text and "locked" not in text, text[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    (run,) = _pretrain_runs()
    assert run.info.status == "KILLED"
    (last,) = project.glob("experiments/pretrain/*/checkpoints/last.ckpt")
    step = _ckpt_step(last)
    proc, log = _start(project, raw_dir, ["resume=auto", f"trainer.max_steps={step + 4}"])
    _finish(proc, log)
    (resumed,) = _pretrain_runs()
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    assert _ckpt_step(last) == step + 4  # continued from its checkpoint to the new budget
