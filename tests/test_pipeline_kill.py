"""kill -9 of a real `anima pipeline` mid-step: the same command again continues that step's run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

ARGS = ["pipeline.name=kill", "pipeline.stages=[pretrain,more]", "pipeline.stage_of={more:pretrain}",
        "device.threads=1",
        "pretrain.model=nano", "pretrain.trainer=smoke", "pretrain.trainer.max_steps=2",
        "pretrain.trainer.num_samples=0", "pretrain.tracking.log_checkpoints=false",
        "+more.init_from=${step:pretrain.model_uri}", "+more.model=nano", "+more.trainer=smoke",
        "+more.trainer.max_steps=300", "+more.trainer.ckpt_every=10", "+more.trainer.val_every=1000",
        "+more.trainer.num_samples=0", "+more.tracking.log_checkpoints=false", "+more.tracking.log_every_n_steps=1"]


def _pipeline(root: Path, raw: Path) -> subprocess.Popen:
    env = {**os.environ, "ANIMA_ROOT": str(root), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "anima", "pipeline", f"paths.raw_dir={raw}", *ARGS], env=env,
                            cwd=str(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_checkpoint(root: Path, proc: subprocess.Popen, timeout: float = 400) -> Path:
    """The `more` step's last.ckpt, once written completely (its size stops changing)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"pipeline ended before a checkpoint of step more:\n{proc.stdout.read()}")
        hits = list((root / "experiments").rglob("*-more/checkpoints/last.ckpt"))
        if hits:
            size = hits[0].stat().st_size
            time.sleep(0.05)
            if size and hits[0].stat().st_size == size:
                return hits[0]
        time.sleep(0.05)
    raise AssertionError("no checkpoint of step more in time")


@pytest.mark.slow
def test_pipeline_killed_mid_step_resumes_that_step(project, raw_dir):
    from mlflow import MlflowClient
    from omegaconf import OmegaConf

    from anima.tracking.store import setup_mlflow

    proc = _pipeline(project, raw_dir)
    _wait_for_checkpoint(project, proc)
    os.kill(proc.pid, signal.SIGKILL)  # mid-step: 300 steps, a checkpoint every 10
    proc.wait(timeout=30)

    exp = setup_mlflow(OmegaConf.create({"uri": f"sqlite:///{project}/mlruns/mlflow.db", "experiment": "anima",
                                         "artifact_root": f"{project}/mlruns/artifacts"}))
    client = MlflowClient()

    def step_runs(step):
        return client.search_runs([exp], f"tags.`anima.pipeline.step` = '{step}'")

    [killed] = step_runs("more")
    assert killed.info.status == "RUNNING"  # nobody has looked at the store since the kill
    assert killed.info.run_name == "kill/more"

    again = _pipeline(project, raw_dir)
    out = again.communicate(timeout=600)[0]
    assert again.returncode == 0, out
    assert "pretrain: skipped" in out and f"continuing interrupted run {killed.info.run_id[:12]}" in out, out

    [pre] = step_runs("pretrain")  # reused from the cache, not run again
    [more] = step_runs("more")  # one run for the step: the killed one, continued
    assert more.info.run_id == killed.info.run_id and more.info.status == "FINISHED"
    assert more.data.tags["anima.pipeline.resumed"] == "true"
    assert more.data.tags["anima.registered"] == "models:/anima-nano/2"
    # continued from a checkpoint (the first is at step 10), not from step 0: the steps before it are logged
    # once, the steps between the checkpoint and the kill twice, and every step up to the end is there
    seen = Counter(m.step for m in client.get_metric_history(more.info.run_id, "train/loss"))
    assert all(seen[s] == 1 for s in range(9)) and max(seen) >= 299 and set(range(9, 299)) <= set(seen), seen
    assert len(client.search_model_versions("name='anima-nano'")) == 2  # one version per step, none twice
    parents = client.search_runs([exp], "tags.`anima.stage` = 'pipeline'", order_by=["attributes.start_time ASC"])
    assert [p.info.status for p in parents] == ["KILLED", "FINISHED"]  # the dead pipeline is not RUNNING forever
    assert more.data.tags["mlflow.parentRunId"] == parents[1].info.run_id
