"""`anima sweep`: search-space parsing and checks (fast), and small real sweeps on the nano model: child runs,
pruned and failed trials, plots, the reproducing preset, registered top trials, Ctrl-C and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import REPO, compose_cfg, postgres_url

from anima.errors import ConfigError
from anima.sweep.space import Param, check_space, format_value, parse_space

FAST = ["sweep=nano_test", "sweep.plots=false", "sweep.top_k=0"]


# -- search space ------------------------------------------------------------------------------------------
def test_parse_nested_and_dotted_keys():
    space = parse_space({"optim": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
                         "model.n_layers": {"type": "int", "low": 2, "high": 6, "step": 2},
                         "model": {"dim": {"type": "categorical", "choices": [64, 128]}}})
    assert [p.key for p in space] == ["optim.lr", "model.n_layers", "model.dim"]
    assert space[1].grid() == [2, 4, 6] and space[2].grid() == [64, 128]


@pytest.mark.parametrize("node, msg", [
    ({"a": {"type": "gauss", "low": 0, "high": 1}}, "sweep.params.a.type='gauss'"),
    ({"a": {"type": "float", "low": 2, "high": 1}}, "low=2 must be <= high=1"),
    ({"a": {"type": "float", "low": 0, "high": 1, "log": True}}, "sweep.params.a.low=0 must be > 0"),
    ({"a": {"type": "int", "low": 0.5, "high": 3}}, "sweep.params.a.low=0.5 must be a whole number"),
    ({"a": {"type": "categorical", "choices": []}}, "sweep.params.a.choices must be a non-empty list"),
    ({"a": {"type": "float", "low": "x", "high": 1}}, "sweep.params.a.low='x' must be a number"),
    ({"a": 3}, "sweep.params.a: expected"),
    ({}, "sweep.params is empty"),
])
def test_parse_errors_name_the_key(node, msg):
    with pytest.raises(ConfigError, match=None) as e:
        parse_space(node)
    assert msg in str(e.value)


def test_grid_needs_discrete_params():
    with pytest.raises(ConfigError, match="sweep.params.optim.lr: sampler=grid needs a step"):
        Param("optim.lr", "float", 1e-4, 1e-2).grid()
    assert Param("x", "float", 0.0, 0.3, step=0.1).grid() == [0.0, 0.1, 0.2, 0.3]


def test_format_value_round_trips_through_hydra():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for v in [3e-4, 1e-05, 7, True, None, "nano", "models:/anima-tiny@latest", "two words", "it's"]:
        assert parser.parse_override(f"k={format_value(v)}").value() == v


def test_unknown_key_fails_before_any_trial_with_a_suggestion(project, raw_dir):
    base = ["model=nano", "trainer=smoke"]
    with pytest.raises(ConfigError) as e:
        check_space("pretrain", base, [Param("optim.lrr", "float", 1e-4, 1e-3)])
    assert "sweep.params.optim.lrr: no key optim.lrr in the pretrain config (did you mean optim.lr?)" in str(e.value)
    with pytest.raises(ConfigError, match=r"model takes one of .*'huge' is not one"):
        check_space("pretrain", base, [Param("model", "categorical", choices=("nano", "huge"))])
    with pytest.raises(ConfigError, match=r"sweep.params: optim.lr=0.0 must be > 0"):
        check_space("pretrain", base, [Param("optim.lr", "float", 0.0, 1e-3)])
    with pytest.raises(ConfigError, match="model.n_layers"):  # a value of the wrong type
        check_space("pretrain", base, [Param("model.n_layers", "categorical", choices=("two",))])
    check_space("pretrain", base, [Param("model", "categorical", choices=("nano", "tiny")),
                                   Param("optim.warmup_steps", "int", 0, 10)])


def test_a_users_own_model_is_a_sweep_choice(project, raw_dir):
    """A model preset in the user config dir (conf.local/model/) is a valid categorical choice of the group."""
    (project / "conf.local" / "model").mkdir(parents=True)
    (project / "conf.local" / "model" / "pico.yaml").write_text(
        (Path(__file__).resolve().parents[1] / "conf" / "model" / "nano.yaml").read_text().replace("nano", "pico"))
    check_space("pretrain", ["trainer=smoke"], [Param("model", "categorical", choices=("nano", "pico"))])
    with pytest.raises(ConfigError, match=r"model takes one of base, hf, hf_qlora, nano, pico, small, tiny; 'huge'"):
        check_space("pretrain", ["trainer=smoke"], [Param("model", "categorical", choices=("pico", "huge"))])


def test_sweep_config_composes_and_validates(project):
    cfg = compose_cfg("sweep", ["sweep=pretrain_arch"])
    assert cfg.sweep.stage == "pretrain" and cfg.sweep.pruner == "hyperband"
    assert cfg.sweep.storage == f"sqlite:///{project}/mlruns/optuna.db"
    parse_space(cfg.sweep.params)
    with pytest.raises(ConfigError, match="sweep.pruner='nope' is not one of median, hyperband, none"):
        compose_cfg("sweep", ["sweep.pruner=nope"])


def test_unknown_key_on_the_command_line_stops_before_the_study(project, raw_dir):
    from anima.stages.sweep import run

    cfg = compose_cfg("sweep", [*FAST, "+sweep.params.optim.lrr={type: float, low: 1.0e-4, high: 1.0e-3}"], raw_dir)
    with pytest.raises(ConfigError, match="did you mean optim.lr"):
        run(cfg)
    assert not (project / "mlruns").exists()  # nothing started: no study, no MLflow run


def _context(overrides: list[str], study: str, out: Path):
    """The SweepContext the sweep stage builds: the composed config's typed `sweep` group and seed."""
    from anima.config.sweep import SweepStageConfig
    from anima.config.typed import typed
    from anima.sweep.objective import SweepContext

    spec = typed(compose_cfg("sweep", overrides), SweepStageConfig)
    return SweepContext(spec.sweep, spec.seed, study, [], [], out)


def test_preset_goes_to_the_user_conf_dir_and_composes(project, monkeypatch):
    """The best-trial preset is written under the user config dir (conf.local/, or $ANIMA_USER_CONF), never into
    the tracked conf/, and `+experiment=sweeps/<study>-best` composes it; `sweep.preset_dir` still wins."""
    import optuna

    from anima.sweep.results import write_preset

    ctx = _context(["sweep=nano_test", "sweep.study_name=p1"], "p1", project / "out")
    best = optuna.trial.create_trial(value=1.5, user_attrs={
        "overrides": ["seed=3", "model=nano", "trainer=smoke", "trainer.max_steps=8", "optim.lr=0.002"]})
    path = write_preset(ctx, best)
    assert path == project / "conf.local" / "experiment" / "sweeps" / "p1-best.yaml"
    assert not (REPO / "conf" / "experiment" / "sweeps" / "p1-best.yaml").exists()
    again = compose_cfg("pretrain", ["+experiment=sweeps/p1-best"])
    assert again.optim.lr == 0.002 and again.model.name == "nano" and again.trainer.max_steps == 8
    assert again.seed == 3
    monkeypatch.setenv("ANIMA_USER_CONF", str(project / "mine"))
    assert write_preset(ctx, best) == project / "mine" / "experiment" / "sweeps" / "p1-best.yaml"
    ctx = _context(["sweep=nano_test", f"sweep.preset_dir={project}/presets"], "p1", project / "out")
    assert write_preset(ctx, best) == project / "presets" / "p1-best.yaml"


def test_trial_runs_are_named_study_t_number(project):
    ctx = _context(["sweep=nano_test"], "my-study", project / "out")
    assert "run_name=my-study-t7" in ctx.trial_overrides(7, {"optim.lr": 0.01})
    cfg = compose_cfg("pretrain", ctx.trial_overrides(7, {"optim.lr": 0.01}))
    assert cfg.run_name == "my-study-t7" and cfg.optim.lr == 0.01


# -- real sweeps ---------------------------------------------------------------------------------------------
def _runs(parent_id: str):
    from mlflow import MlflowClient

    client = MlflowClient()
    parent = client.get_run(parent_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    return client, parent, children


@pytest.mark.slow
def test_nano_sweep_end_to_end(project, raw_dir):
    """4 trials: child runs tagged with study/trial/state, a pruned and a failed trial, plots, a preset that
    composes and reproduces the best trial's values, and the top 2 registered with their sweep tags."""
    import torch

    from anima.config.compose import compose
    from anima.stages.sweep import run

    torch.set_num_threads(1)
    study = f"pytest-{uuid.uuid4().hex[:8]}"
    cfg = compose_cfg("sweep", [
        "sweep=nano_test", f"sweep.study_name={study}", "sweep.sampler=grid", "sweep.sampler_seed=4",
        "sweep.n_trials=6", "sweep.pruner_startup_trials=1",
        "~sweep.params.optim", "+sweep.params.optim.lr={type: categorical, choices: [0.02, 0.0003, 0.00001]}",
        "+sweep.params.model.n_heads={type: categorical, choices: [4, 3]}",
    ], raw_dir)
    preset = project / "conf.local" / "experiment" / "sweeps" / f"{study}-best.yaml"  # the user conf dir
    res = run(cfg)
    client, parent, children = _runs(res.run_id)
    states = {int(r.data.tags["anima.sweep.trial"]): r.data.tags["anima.sweep.state"] for r in children}
    assert len(children) == 6 and sorted(states) == list(range(6))
    assert all(r.data.tags["anima.sweep.study"] == study for r in children)
    assert sorted(r.info.run_name for r in children) == sorted(f"{study}-t{n}" for n in range(6))
    assert parent.info.run_name == f"sweep-{study}"
    assert sorted(states.values()).count("FAIL") == 3  # n_heads=3 does not divide dim=64: fails, study goes on
    assert "PRUNED" in states.values() and "COMPLETE" in states.values()
    for r in children:
        state = r.data.tags["anima.sweep.state"]
        assert r.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}[state]
        assert r.data.params["optim.lr"] in {"0.02", "0.0003", "1e-05"}  # params = the suggested values
        if state == "FAIL":
            assert "must be divisible by model.n_heads=3" in r.data.tags["anima.error"]
        else:
            assert r.data.params["model.n_heads"] == "4" and r.data.params["registry.register"] == "False"
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_value"] == pytest.approx(res.best_value)
    assert parent.data.params["best.optim.lr"] == str(res.best_params["optim.lr"])
    assert res.best_params == {"model.n_heads": 4, "optim.lr": 0.02}
    arts = {a.path for a in client.list_artifacts(res.run_id, "plots")}
    assert {"plots/optimization_history.png", "plots/intermediate_values.png",
            "plots/parallel_coordinate.png", "plots/param_importances.png"} <= arts
    # the preset reproduces the best trial's config
    assert res.preset == preset and not (REPO / "conf" / "experiment" / "sweeps" / preset.name).exists()
    text = preset.read_text()
    assert text.startswith("# @package _global_") and "override /model: nano" in text
    best = compose("pretrain", [f"paths.raw_dir={raw_dir}", f"+experiment=sweeps/{study}-best"])
    assert best.optim.lr == 0.02 and best.model.n_heads == 4 and best.trainer.max_steps == 8
    assert best.model.name == "nano" and best.trainer.val_every == 2
    # top-k registered from the trials' logged models, tagged with study and trial
    versions = client.search_model_versions("name='anima-nano'")
    assert len(versions) == 1 == len(res.registered)  # top_k=2, but pruned/failed trials are never registered
    assert {v.tags["sweep_study"] for v in versions} == {study}
    best_version = [v for v in versions if v.tags["sweep_rank"] == "1"][0]
    assert int(best_version.tags["sweep_trial"]) == res.best_trial and best_version.tags["val_ppl"]
    assert best_version.source.endswith(f"{best_version.run_id}/artifacts/model")
    # a second invocation of the same study runs nothing more and does not register twice
    again = run(cfg)
    assert again.counts == res.counts and len(client.search_model_versions("name='anima-nano'")) == 1


def _cli(root: Path, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "ANIMA_ROOT": str(root), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "anima", "sweep", *args], env=env, cwd=str(root),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _prepare_store(root: Path) -> None:
    """Create the MLflow tables once, before workers start together (as `anima status` would)."""
    from omegaconf import OmegaConf

    from anima.tracking.store import setup_mlflow

    setup_mlflow(OmegaConf.create({"uri": f"sqlite:///{root}/mlruns/mlflow.db", "experiment": "anima",
                                   "artifact_root": f"{root}/mlruns/artifacts"}))


def _warm_caches(raw_dir: Path) -> None:
    """Build the nano tokenizer and token cache once: two workers building them at the same instant race on
    the cache directory (a foundation issue reported separately), which is not what this test is about."""
    from anima.train.prepare import prepare_data

    prepare_data(compose_cfg("pretrain", ["model=nano", "trainer=smoke"], raw_dir))


def _two_workers(root: Path, raw_dir: Path, storage: str, study: str) -> None:
    import optuna

    _warm_caches(raw_dir)

    args = ["sweep=nano_test", f"sweep.storage={storage}", f"sweep.study_name={study}", "sweep.n_trials=6",
            "sweep.top_k=0", "sweep.plots=false", "sweep.pruner=none", "+sweep.set.trainer.max_steps=24",
            f"paths.raw_dir={raw_dir}", "device.threads=1", f"sweep.preset_dir={root}/presets"]
    procs = [_cli(root, *args, f"sweep.sampler_seed={i}") for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    from anima.sweep.study import make_storage

    trials = optuna.load_study(study_name=study, storage=make_storage(storage, 60)).get_trials()
    assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials), \
        ([t.state.name for t in trials], [o[-1500:] for o in outs])
    assert sorted(t.number for t in trials) == list(range(6))
    ran = [out.count(" COMPLETE ") for out in outs]
    assert sum(ran) == 6 and min(ran) >= 1, outs  # both workers took trials of the one study


@pytest.mark.slow
def test_two_processes_share_one_sqlite_study(project, raw_dir):
    _prepare_store(project)
    _two_workers(project, raw_dir, f"sqlite:///{project}/mlruns/optuna.db", "shared")


@pytest.mark.slow
@pytest.mark.postgres
def test_two_processes_share_one_postgres_study(project, raw_dir):
    url = postgres_url()  # skips when absent; fails under CI=true
    _prepare_store(project)
    _two_workers(project, raw_dir, url, f"pytest-{uuid.uuid4().hex[:8]}")


@pytest.mark.slow
def test_ctrl_c_keeps_the_study_resumable(project, raw_dir):
    """SIGINT mid-trial: exit 130, parent run KILLED, trial marked interrupted; resuming reruns it and ends."""
    import optuna
    import sqlalchemy.exc
    from mlflow import MlflowClient

    _prepare_store(project)
    storage = f"sqlite:///{project}/mlruns/optuna.db"
    args = ["sweep=nano_test", "sweep.study_name=stop", "sweep.top_k=0", "sweep.plots=false", "sweep.n_trials=3",
            "sweep.pruner=none", "+sweep.set.trainer.max_steps=5000", "+sweep.set.trainer.val_every=50",
            f"sweep.preset_dir={project}/presets",
            f"paths.raw_dir={raw_dir}", "device.threads=1"]
    p = _cli(project, *args)
    deadline = time.time() + 180
    optuna_db = project / "mlruns" / "optuna.db"
    while time.time() < deadline:  # wait until the first trial is inside Lightning's fit loop (it has reported)
        time.sleep(1)
        if optuna_db.exists():
            try:
                st = optuna.load_study(study_name="stop", storage=storage)
                if any(t.intermediate_values for t in st.get_trials()):
                    time.sleep(2)
                    break
            except (KeyError, sqlalchemy.exc.SQLAlchemyError):
                pass  # no study yet, or the sweep is still creating the schema this poll raced with
    p.send_signal(signal.SIGINT)
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 130, out[-3000:]
    assert "resume with `anima sweep sweep=nano_test sweep.study_name=stop`" in out
    trials = optuna.load_study(study_name="stop", storage=storage).get_trials()
    assert [t.state.name for t in trials] == ["FAIL"] and trials[0].user_attrs["interrupted"]
    assert 0 < trials[0].user_attrs["steps"] < 5000  # stopped inside Lightning's fit loop
    assert "interrupted (Ctrl-C)" in out
    client = MlflowClient(f"sqlite:///{project}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("anima").experiment_id])
    parent = [r for r in runs if r.data.tags.get("anima.stage") == "sweep"][0]
    child = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id][0]
    assert parent.info.status == "KILLED" and child.info.status == "KILLED"
    assert child.data.tags["anima.sweep.state"] == "FAIL"
    # resume with short trials: the interrupted params run again first, then the rest of the budget
    p = _cli(project, *[a for a in args if "sweep.set" not in a])
    out = p.communicate(timeout=300)[0]
    assert p.returncode == 0, out[-3000:]
    trials = optuna.load_study(study_name="stop", storage=storage).get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    assert trials[1].params == trials[0].params and trials[1].user_attrs["retry_of"] == 0


def _wait_for_training(storage: str, study: str, deadline: float):
    """The RUNNING trial once it is inside Lightning's fit loop (its run is known and it has reported)."""
    import optuna
    import sqlalchemy.exc

    while time.time() < deadline:
        time.sleep(0.5)
        try:
            st = optuna.load_study(study_name=study, storage=storage)
        except (KeyError, sqlalchemy.exc.SQLAlchemyError):
            continue  # no study yet, or the sweep is still creating the schema this poll raced with
        for t in st.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
            if t.intermediate_values and t.user_attrs.get("run_id"):
                return t
    raise AssertionError("no trial started training in time")


@pytest.mark.slow
def test_sigkill_mid_trial_and_rerun_finishes_the_study(project, raw_dir):
    """kill -9 mid-trial, then the same command again: the killed trial is FAIL (at once, not after the heartbeat
    grace period), its parameters are retried once, the study ends with n_trials finished trials, every run of
    the study has ended (the killed ones KILLED), trial runs are named <study>-t<N>, and the preset lands in the
    user config dir, not in the checkout's conf/."""
    import optuna
    from mlflow import MlflowClient

    _prepare_store(project)
    _warm_caches(raw_dir)
    storage = f"sqlite:///{project}/mlruns/optuna.db"
    args = ["sweep=nano_test", "sweep.study_name=kill9", "sweep.n_trials=3", "sweep.top_k=0", "sweep.plots=false",
            "sweep.pruner=none", "+sweep.set.trainer.max_steps=40", "+sweep.set.trainer.val_every=4",
            f"paths.raw_dir={raw_dir}", "device.threads=1"]
    p = _cli(project, *args)
    try:
        victim = _wait_for_training(storage, "kill9", time.time() + 240)
    finally:
        os.kill(p.pid, signal.SIGKILL)
        out = p.communicate(timeout=60)[0]
    assert p.returncode == -signal.SIGKILL, out[-3000:]
    st = optuna.load_study(study_name="kill9", storage=storage)
    killed = st.trials[victim.number]
    assert killed.state.name == "RUNNING", out[-3000:]  # died mid-trial: nothing cleaned up
    client = MlflowClient(f"sqlite:///{project}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("anima").experiment_id
    assert client.get_run(killed.user_attrs["run_id"]).info.status == "RUNNING"

    started = time.time()
    p = _cli(project, *args)  # the very same command
    out = p.communicate(timeout=600)[0]
    assert p.returncode == 0, out[-3000:]
    assert f"trial {victim.number} of a dead worker failed and requeued" in out
    trials = optuna.load_study(study_name="kill9", storage=storage).get_trials()
    states = [t.state.name for t in trials]
    assert trials[victim.number].state.name == "FAIL" and states.count("FAIL") == 1, states
    assert trials[victim.number].user_attrs["error"].startswith("worker died: its sweep run")
    assert states.count("COMPLETE") + states.count("PRUNED") == 3 and len(trials) == 4, states
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retry) == 1 and retry[0].params == killed.params and retry[0].state.name == "COMPLETE"
    assert time.time() - started < 300  # not waiting for the 180 s heartbeat grace period on top of training

    runs = client.search_runs([exp], max_results=1000)
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    parents = sorted((r for r in runs if r.data.tags.get("anima.stage") == "sweep"), key=lambda r: r.info.start_time)
    assert [r.info.status for r in parents] == ["KILLED", "FINISHED"]
    assert all(r.info.run_name == "sweep-kill9" for r in parents)
    dead = client.get_run(killed.user_attrs["run_id"])
    assert dead.info.status == "KILLED" and dead.data.tags["anima.sweep.state"] == "FAIL"
    assert dead.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") in {p.info.run_id for p in parents}]
    assert sorted(r.info.run_name for r in children) == [f"kill9-t{n}" for n in range(4)]
    for r in children:
        assert r.info.run_name == f"kill9-t{r.data.tags['anima.sweep.trial']}"
        assert r.data.params["run_name"] == r.info.run_name  # the training run the trial created
    assert client.get_run(retry[0].user_attrs["run_id"]).data.tags["anima.sweep.retry_of"] == str(victim.number)

    preset = project / "conf.local" / "experiment" / "sweeps" / "kill9-best.yaml"
    assert preset.is_file() and not (REPO / "conf" / "experiment" / "sweeps" / "kill9-best.yaml").exists()
