"""Which run `resume=auto|<run_id>` continues, and what it refuses, against a real MLflow store (no training:
the interrupted runs are real stage runs that crashed, or a real process killed with SIGKILL). Also safe
loading: checkpoints load with weights_only=True, pickle-only model dirs are refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anima.errors import AnimaError, ModelError
from tests.helpers import NANO_FAST, compose_cfg

BASE = [*NANO_FAST, "optim.lr=0.001", "trainer.batch_size=2"]


def _cfg(*extra: str):
    return compose_cfg("pretrain", [*BASE, *extra])


def _resume(*extra: str):
    """find_resume as `anima pretrain ... resume=...` calls it: the composed config and its typed form."""
    from anima.config.stage_schemas import TrainConfig
    from anima.config.typed import typed
    from anima.train.resume import find_resume

    cfg = _cfg(*extra)
    return find_resume(cfg, typed(cfg, TrainConfig))


def _crashed(cfg, ckpt_dir: Path, tags: dict[str, str] | None = None) -> str:
    """A real pretrain-stage run that crashed (FAILED), as `anima pretrain` leaves it."""
    from anima.train.resume import CHECKPOINT_TAG
    from anima.tracking.run import stage_run

    with pytest.raises(RuntimeError):
        with stage_run(cfg, overrides=[], extra_tags={CHECKPOINT_TAG: str(ckpt_dir), **(tags or {})}) as run:
            run_id = run.info.run_id
            raise RuntimeError("crash")
    return run_id


def test_auto_refuses_a_changed_config_in_one_line_naming_each_key(project):
    rid = _crashed(_cfg(), project / "a" / "checkpoints")
    with pytest.raises(AnimaError) as e:
        _resume("optim.lr=0.002", "trainer.batch_size=4", "resume=auto")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"resume=auto: run {rid} was started with optim.lr=0.001, not 0.002; "
                          "trainer.batch_size=2, not 4")


def test_auto_takes_allowed_keys_from_the_user(project):
    rid = _crashed(_cfg(), project / "a" / "checkpoints")
    point = _resume("trainer.max_steps=99", "trainer.progress=rich", "tracking.log_every_n_steps=5", "resume=auto")
    assert point.run_id == rid
    assert point.ckpt is None  # died before its first checkpoint: step 0, same run
    assert point.changed["trainer.max_steps"] == (4, 99)
    assert "trainer.progress" in point.changed


def test_auto_never_picks_a_sweep_trial_pipeline_step_other_registry_name_or_live_run(project):
    import mlflow

    from anima.tracking.run import stage_run

    cfg = _cfg()
    _crashed(cfg, project / "s" / "checkpoints", {"anima.sweep.study": "st", "anima.sweep.trial": "0"})
    _crashed(cfg, project / "p" / "checkpoints", {"anima.pipeline.step": "pretrain"})
    _crashed(_cfg("registry.name=other"), project / "o" / "checkpoints")
    finished = None
    with stage_run(cfg, overrides=[], extra_tags={"anima.checkpoint_dir": str(project / "f")}) as run:
        finished = run.info.run_id
    with pytest.raises(AnimaError, match="no interrupted pretrain run of anima-nano"):
        _resume("resume=auto")
    # a run still alive (held by this very process) is not a candidate either
    with stage_run(cfg, overrides=[], extra_tags={"anima.checkpoint_dir": str(project / "l")}) as live:
        with pytest.raises(AnimaError, match="no interrupted"):
            _resume("resume=auto")
        assert mlflow.get_run(live.info.run_id).info.status == "RUNNING"
    assert mlflow.get_run(finished).info.status == "FINISHED"


def test_resume_by_id_checks_the_config_unless_forced(project):
    rid = _crashed(_cfg(), project / "a" / "checkpoints")
    with pytest.raises(AnimaError, match=f"resume={rid}: run {rid} was started with optim.lr=0.001, not 0.003"):
        _resume("optim.lr=0.003", f"resume={rid}")
    point = _resume("optim.lr=0.003", f"resume={rid}", "resume_force=true")
    assert point.run_id == rid and point.changed["optim.lr"] == (0.001, 0.003)
    with pytest.raises(AnimaError, match="resume_force=true needs resume=<run_id>"):
        _resume("resume=auto", "resume_force=true")
    with pytest.raises(AnimaError, match="resume=0123abc: no such run"):
        _resume("resume=0123abc")


HOLDER = """
import sys, time
from anima.config.compose import compose
from anima.tracking.run import stage_run
cfg = compose("pretrain", sys.argv[2:])
with stage_run(cfg, overrides=[], extra_tags={"anima.checkpoint_dir": sys.argv[1]}) as run:
    print(run.info.run_id, flush=True)
    time.sleep(600)
"""


def test_a_live_run_is_left_alone_and_a_killed_one_is_marked_killed_then_resumed(project):
    import mlflow

    from anima.tracking.liveness import LOCK_TAG, mark_dead_runs

    from anima.tracking.store import setup_mlflow

    setup_mlflow(_cfg().tracking)
    env = {**os.environ, "ANIMA_ROOT": str(project)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(project / "k" / "checkpoints"), *BASE],
                            stdout=subprocess.PIPE, env=env, text=True)
    try:
        rid = proc.stdout.readline().strip()
        assert rid, "the holder process did not start its run"
        deadline = time.monotonic() + 60
        while LOCK_TAG not in mlflow.get_run(rid).data.tags:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        lock = Path(mlflow.get_run(rid).data.tags[LOCK_TAG])
        assert lock.is_file()
        assert mark_dead_runs() == []
        with pytest.raises(AnimaError, match=f"run {rid} is still running"):
            _resume(f"resume={rid}")
        with pytest.raises(AnimaError, match="no interrupted"):
            _resume("resume=auto")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert mlflow.get_run(rid).info.status == "RUNNING"  # nobody has looked yet
    point = _resume("resume=auto")  # the lookup notices the dead process
    assert point.run_id == rid
    run = mlflow.get_run(rid)
    assert run.info.status == "KILLED" and "is gone" in run.data.tags["anima.killed"]
    assert not lock.exists()


def test_checkpoints_load_weights_only(tmp_path):
    import pickle

    import torch

    from anima.train.callbacks import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    good = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "global_step": 3}, good)
    assert not (tmp_path / ".last.ckpt.tmp").exists()
    assert io.load_checkpoint(good)["global_step"] == 3
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Path("/etc/passwd")}, evil)  # an arbitrary object: needs unpickling
    with pytest.raises(pickle.UnpicklingError):
        io.load_checkpoint(evil, weights_only=False)  # the caller's False is overruled


def test_a_pickle_only_model_dir_is_refused_in_one_line(tmp_path):
    import torch
    from transformers import LlamaConfig

    from anima.data.quality import PerplexityScorer
    from anima.model.build import load_model_dir
    from anima.model.resolve import resolve_model

    model_dir = tmp_path / "pickled"
    model_dir.mkdir()
    LlamaConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                vocab_size=32).save_pretrained(model_dir)
    torch.save({"model.embed_tokens.weight": torch.zeros(32, 8)}, model_dir / "pytorch_model.bin")
    for load in (resolve_model, PerplexityScorer, load_model_dir):  # registry/init_from, quality filter, model=hf
        with pytest.raises(ModelError) as e:
            load(str(model_dir))
        assert str(model_dir) in str(e.value) and "pytorch_model.bin" in str(e.value) and "\n" not in str(e.value)


def test_a_run_on_another_host_is_judged_by_its_heartbeat_on_a_shared_store(monkeypatch):
    import mlflow

    from anima.tracking.liveness import HEARTBEAT_TAG, HOST_TAG, PID_TAG, STALE_AFTER_S, dead_reason

    now = time.time()
    tags = {HOST_TAG: "another-host", PID_TAG: "4242"}
    old, fresh = {**tags, HEARTBEAT_TAG: str(int(now - STALE_AFTER_S - 60))}, {**tags, HEARTBEAT_TAG: str(int(now))}
    saved = mlflow.get_tracking_uri()
    try:
        mlflow.set_tracking_uri("http://127.0.0.1:9")  # a server store (never contacted here)
        assert "heartbeat from another-host stopped" in dead_reason(old)
        assert dead_reason(fresh) is None
        mlflow.set_tracking_uri("sqlite:////tmp/never-opened.db")  # local store: no heartbeats to judge by
        assert dead_reason(old) is None
    finally:
        mlflow.set_tracking_uri(saved)
