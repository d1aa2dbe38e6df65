"""Data-parallel training: W ranks with batch b see disjoint shares of exactly what one process with batch W*b
sees (training batches, DataLoader workers, validation rows), and a real 2-process run (gloo on CPU, from the
`anima` CLI and under torchrun) matches the single-process batch-2b run step by step; only rank 0 records, as
one MLflow run; resume=auto continues a killed DDP run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from anima.train.chat_rows import ChatBatches, ChatRows
from anima.train.distributed import env_rank
from anima.train.text_data import RandomWindows
from anima.train.val_shard import ValShard, shard_val_sets
from tests.helpers import NANO_FAST

B = 3  # per-rank batch in the unit tests


def _windows(batch: int, start: int = 0, total: int = 6) -> RandomWindows:
    return RandomWindows(np.arange(5000, dtype=np.uint16), 16, batch, seed=7, start=lambda: start, total=total)


def _rows(batch: dict) -> set[tuple[int, ...]]:
    return {tuple(r) for r in batch["input_ids"].tolist()}


def test_random_windows_ranks_split_the_single_process_batch():
    whole = _windows(2 * B)
    for i in range(4):
        shares = []
        for rank in (0, 1):
            ds = _windows(B)
            ds.shard(rank, 2)
            shares.append(ds.batch_at(i))
        assert _rows(shares[0]).isdisjoint(_rows(shares[1]))
        both = torch.cat([s["input_ids"] for s in shares])
        assert torch.equal(both, whole.batch_at(i)["input_ids"])  # same rows, same order
        assert torch.equal(torch.cat([s["labels"] for s in shares]), whole.batch_at(i)["labels"])


def test_chat_batches_ranks_split_the_single_process_batch():
    rows = ChatRows([[1, 2, n] for n in range(23)], [[2, n, -100] for n in range(23)], [str(n) for n in range(23)])
    whole = ChatBatches(rows, 2 * B, pad_id=0, seed=3)
    for i in range(6):  # crosses epoch boundaries (23 rows, 6 per global batch)
        shares = []
        for rank in (0, 1):
            ds = ChatBatches(rows, B, pad_id=0, seed=3)
            ds.shard(rank, 2)
            shares.append(ds.indices_at(i))
        assert shares[0] + shares[1] == whole.indices_at(i)
        assert len(set(shares[0]) | set(shares[1])) == 2 * B  # disjoint within the global batch


@pytest.mark.parametrize("workers", [2, 3])
def test_dataloader_workers_keep_the_stream(workers):
    from torch.utils.data import DataLoader

    def stream(num_workers: int) -> list[torch.Tensor]:
        ds = _windows(B, start=2, total=9)
        ds.shard(1, 2)
        return [b["input_ids"] for b in DataLoader(ds, batch_size=None, num_workers=num_workers)]

    plain, parallel = stream(0), stream(workers)
    assert len(plain) == len(parallel) == 7  # each batch once
    assert all(torch.equal(a, b) for a, b in zip(plain, parallel))


def test_val_shards_cover_the_single_process_rows_once():
    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return 11

        def __getitem__(self, i):
            return {"input_ids": torch.full((4,), i), "labels": torch.full((4,), i)}

    ds = Rows()
    for limit, expect in ((None, set(range(11))), (6, set(range(6)))):
        shards = [ValShard(ds, r, 2, limit) for r in (0, 1)]
        assert len(shards[0]) == len(shards[1])  # the same number of batches on every rank
        scored = [int(s[i]["labels"][0]) for s in shards for i in range(len(s)) if s[i]["labels"][0] != -100]
        assert sorted(scored) == sorted(expect)
    assert shard_val_sets({"val": ds}, 2, 3, 0, 1)["val"] is ds  # one process: untouched
    assert len(shard_val_sets({"val": ds}, 2, 1, 1, 2)["val"]) == 2  # 1 batch of 2 rows per rank


def test_env_rank(monkeypatch):
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert env_rank() == 0
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("NODE_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert env_rank(num_nodes=2) == 3  # Lightning's child: node 1 of 2 nodes x 2 ranks, local rank 1
    monkeypatch.setenv("RANK", "2")
    assert env_rank(num_nodes=2) == 2  # torchrun says it outright


# -- real runs: 2 gloo processes x 1 thread vs 1 process with twice the batch ----------------------------------
STEPS = 8
COMMON = [*NANO_FAST, f"trainer.max_steps={STEPS}", "trainer.num_samples=0", "optim.warmup_steps=2",
          "device.precision=32-true", "device.matmul_precision=highest", "device.threads=1"]
DDP = [*COMMON, "trainer.batch_size=2", "device=ddp", "device.accelerator=cpu", "device.devices=2"]
SINGLE = [*COMMON, "trainer.batch_size=4", "device=cpu"]
REL = 1e-4  # fp32: equal-size windows, so only the order of float sums differs (seen: ~2e-6)


def _env(project: Path) -> dict[str, str]:
    env = {**os.environ, "ANIMA_ROOT": str(project), "MLFLOW_DISABLE_TELEMETRY": "true"}
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "ANIMA_DDP_PLAN"):
        env.pop(key, None)
    return env


def _anima(project: Path, raw: Path, args: list[str], launcher: list[str] | None = None) -> None:
    cmd = [*(launcher or [sys.executable, "-m"]), "anima", "pretrain", f"paths.raw_dir={raw}", *args]
    out = subprocess.run(cmd, env=_env(project), cwd=project, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]


def _runs(project: Path) -> list:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    return mlflow.search_runs(search_all_experiments=True, filter_string="tags.`anima.stage` = 'pretrain'",
                              order_by=["attributes.start_time ASC"], output_format="list")


def _curve(run_id: str, key: str) -> dict[int, float]:
    import mlflow

    return {m.step: m.value for m in mlflow.MlflowClient().get_metric_history(run_id, key)}


def _close(a: dict[int, float], b: dict[int, float]) -> None:
    assert sorted(a) == sorted(b)
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=REL), f"step {step}: {a[step]} vs {b[step]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, raw_dir) -> tuple[Path, object]:
    """One project root; its single-process run with batch 4 (the run DDP must match)."""
    project = tmp_path_factory.mktemp("ddp")
    _anima(project, raw_dir, SINGLE)
    (run,) = _runs(project)
    return project, run


def _check_ddp_run(project: Path, before: int, reference) -> object:
    runs = _runs(project)
    assert len(runs) == before + 1  # one MLflow run for the two ranks
    run = runs[-1]
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert (params["device.world_size"], params["trainer.batch_size_per_rank"]) == ("2", "2")
    assert params["trainer.global_batch_size"] == reference.data.params["trainer.global_batch_size"] == "4"
    loss = _curve(run.info.run_id, "train/loss")
    assert sorted(loss) == list(range(STEPS))
    _close(loss, _curve(reference.info.run_id, "train/loss"))
    _close(_curve(run.info.run_id, "val/loss"), _curve(reference.info.run_id, "val/loss"))
    assert run.data.metrics["val/loss"] == pytest.approx(reference.data.metrics["val/loss"], rel=REL)
    return run


@pytest.mark.slow
def test_ddp_from_the_cli_matches_one_process_with_the_global_batch(reference, raw_dir):
    project, ref = reference
    before = len(_runs(project))
    _anima(project, raw_dir, DDP)
    run = _check_ddp_run(project, before, ref)
    out_dir = Path(run.data.tags["anima.checkpoint_dir"]).parent
    assert (out_dir / "model" / "model.safetensors").is_file() and (out_dir / "checkpoints" / "last.ckpt").is_file()
    assert (out_dir / ".hydra" / "hydra.yaml").read_text().count("train_ddp_process") == 0  # rank 0's record


@pytest.mark.slow
def test_ddp_under_torchrun_matches_one_process_with_the_global_batch(reference, raw_dir):
    project, ref = reference
    before = len(_runs(project))
    torchrun = Path(sys.executable).with_name("torchrun")
    _anima(project, raw_dir, DDP, launcher=[str(torchrun), "--standalone", "--nproc_per_node=2", "-m"])
    _check_ddp_run(project, before, ref)


@pytest.mark.slow
def test_resume_auto_continues_a_killed_ddp_run(reference, raw_dir):
    project, ref = reference
    args = [*DDP, "trainer.ckpt_every=4", "trainer.val_every=4"]
    old = set(project.glob("experiments/pretrain/*/checkpoints/last.ckpt"))
    proc = subprocess.Popen([sys.executable, "-m", "anima", "pretrain", f"paths.raw_dir={raw_dir}", *args],
                            env=_env(project), cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # its own process group: rank 0 and the rank it starts
    before = {r.info.run_id for r in _runs(project)}
    end = time.monotonic() + 240
    ckpt = None
    while ckpt is None:
        assert proc.poll() is None, "the DDP run ended before its first checkpoint"
        assert time.monotonic() < end, "no checkpoint within 240 s"
        ckpt = next(iter(set(project.glob("experiments/pretrain/*/checkpoints/last.ckpt")) - old), None)
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # both ranks, mid-run
    proc.wait(30)
    step = int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])
    assert step < STEPS
    killed = [r for r in _runs(project) if r.info.run_id not in before]
    assert len(killed) == 1
    _anima(project, raw_dir, [*args, "resume=auto"])
    runs = [r for r in _runs(project) if r.info.run_id not in before]
    assert [r.info.run_id for r in runs] == [killed[0].info.run_id]  # continued, not a new run
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.params["device.world_size"] == "2"
    assert max(_curve(run.info.run_id, "train/loss")) == STEPS - 1
    # the same 8 global batches as the one-process run: its final validation agrees
    assert run.data.metrics["val/loss"] == pytest.approx(ref.data.metrics["val/loss"], rel=REL)
