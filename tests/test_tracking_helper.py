"""The tracking helper (anima.tracking.helper): a training stage's MLflow run held by a child process. A run recorded
through it must be the run a trainer with MLflow in-process records; failures must surface as they would there."""

from __future__ import annotations

import os

import pytest

from anima.errors import ConfigError
from anima.tracking.helper import TrackingHelper
from anima.tracking.tracker import use_helper
from tests.helpers import NANO_FAST, compose_cfg

#: Tags that name the process, the moment or the folder of one run rather than what it recorded.
PER_RUN_TAGS = {"anima.pid", "anima.lock", "anima.heartbeat", "anima.output_dir", "anima.checkpoint_dir",
                "anima.registered", "mlflow.runName", "anima.command", "mlflow.source.name", "mlflow.source.git.branch"}


def test_calls_run_in_the_helper_and_a_failed_send_is_raised_by_the_next_call():
    helper = TrackingHelper()
    try:
        assert helper.call("os:getpid") == helper.proc.pid != os.getpid()
        pending = helper.submit("builtins:sum", [1, 2, 3])
        assert helper.call("builtins:len", [1, 2]) == 2 and pending.result() == 6  # replies in order, read later
        helper.send("anima.tracking.tracker:use_helper", "maybe", True, True)  # ConfigError, nobody waits for it
        with pytest.raises(ConfigError, match="tracking.helper=maybe"):
            helper.call("builtins:len", [])
        assert helper.call("builtins:len", []) == 0  # reported once; the helper goes on
    finally:
        helper.close()
    assert helper.proc.returncode == 0


def test_auto_uses_the_helper_for_the_command_lines_own_fresh_single_process_run(tmp_path):
    from anima.tracking.context import run_context

    assert use_helper("true", False, False) and not use_helper("False", True, True)
    assert not use_helper("auto", True, True)  # a library call: the caller reads the run back in-process
    with run_context(command_line=True):
        assert use_helper("auto", True, True)
        assert not use_helper("auto", False, True) and not use_helper("auto", True, False)  # resumed; ranks
        with run_context(output_dir=tmp_path / "step"):  # a pipeline step or sweep trial inside the command
            assert not use_helper("auto", True, True)
    with pytest.raises(ConfigError, match="tracking.helper=sometimes"):
        use_helper("sometimes", True, True)


def _store(project):
    import mlflow

    uri = f"sqlite:///{project}/mlruns/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient()


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for a in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, a.path) if a.is_dir else {a.path}
    return out


@pytest.mark.slow
def test_a_run_through_the_helper_records_what_an_in_process_run_records(project, raw_dir):
    from anima.stages.train import train

    base = [*NANO_FAST, "trainer.max_steps=4", "trainer.val_every=2"]
    local = train(compose_cfg("pretrain", [*base, "tracking.helper=false"], raw_dir))
    helped = train(compose_cfg("pretrain", [*base, "tracking.helper=true"], raw_dir))
    client = _store(project)
    a, b = client.get_run(local.run_id), client.get_run(helped.run_id)
    assert a.info.status == b.info.status == "FINISHED"
    assert int(b.data.tags["anima.pid"]) != os.getpid()  # held by the helper
    assert {k: v for k, v in a.data.params.items() if k != "tracking.helper"} == \
        {k: v for k, v in b.data.params.items() if k != "tracking.helper"}
    assert {k: v for k, v in a.data.tags.items() if k not in PER_RUN_TAGS} == \
        {k: v for k, v in b.data.tags.items() if k not in PER_RUN_TAGS}
    assert a.data.metrics.keys() - {"startup_s"} == b.data.metrics.keys()  # start-up: logged once per process
    assert a.data.metrics["val/loss"] == b.data.metrics["val/loss"]  # same seed, same training
    for key in ("train/loss", "val/loss", "train/lr"):
        hist_a, hist_b = client.get_metric_history(a.info.run_id, key), client.get_metric_history(b.info.run_id, key)
        assert [(m.step, m.value) for m in hist_a] == [(m.step, m.value) for m in hist_b], key
    assert _artifacts(client, a.info.run_id) == _artifacts(client, b.info.run_id)
    assert [(d.dataset.name, d.dataset.digest) for d in a.inputs.dataset_inputs] == \
        [(d.dataset.name, d.dataset.digest) for d in b.inputs.dataset_inputs]
    va, vb = (client.get_model_version(r.registered_name, r.version) for r in (local, helped))
    assert {k: v for k, v in va.tags.items()} == {k: v for k, v in vb.tags.items()}
    assert b.data.tags["anima.registered"] == f"models:/{helped.registered_name}/{helped.version}"


def test_a_stage_that_fails_before_training_leaves_no_run_behind(project, raw_dir, tmp_path):
    from anima.stages.train import train

    cfg = compose_cfg("sft", [*NANO_FAST, "tracking.helper=true", "model=hf",
                              f"model.path={tmp_path / 'no-such-model'}"], raw_dir)
    with pytest.raises(ConfigError, match="no-such-model has no tokenizer.json"):
        train(cfg)
    client = _store(project)
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert experiments and client.search_runs(experiments) == []


def test_an_unreachable_tracking_server_is_one_line_naming_the_uri(project, raw_dir):
    from anima.stages.train import train

    cfg = compose_cfg("pretrain", [*NANO_FAST, "tracking.helper=true", "tracking.uri=http://127.0.0.1:9"], raw_dir)
    with pytest.raises(ConfigError, match=r"tracking.uri=http://127.0.0.1:9: cannot reach the MLflow"):
        train(cfg)
