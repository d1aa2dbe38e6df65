"""A real pipeline on the nano model: parent/child runs, caching, per-step re-runs, force, resume after a failure."""

from __future__ import annotations

import pytest

from anima.errors import AnimaError
from tests.helpers import compose_cfg

BASE = ["pipeline.name=nano", "pipeline.stages=[pretrain,more]", "pipeline.stage_of={more:pretrain}",
        "device.threads=1",
        "pretrain.model=nano", "pretrain.trainer=smoke", "pretrain.trainer.max_steps=2",
        "pretrain.trainer.num_samples=0", "pretrain.tracking.log_checkpoints=false",
        "+more.init_from=${step:pretrain.model_uri}", "+more.model=nano", "+more.trainer=smoke",
        "+more.trainer.max_steps=2", "+more.trainer.num_samples=0", "+more.tracking.log_checkpoints=false",
        "+more.optim.lr=1e-3"]


def _run(raw, *extra):
    from rich.console import Console

    from anima.pipeline.runner import Runner

    cfg = compose_cfg("pipeline", [*BASE, *extra], raw)
    return Runner(cfg, Console(width=200, force_terminal=False)).run()


def _status(result):
    return {o.step: o.status for o in result.steps}


@pytest.mark.slow
def test_pipeline_caches_reruns_and_resumes(project, raw_dir):
    import torch
    from mlflow import MlflowClient

    torch.set_num_threads(1)
    first = _run(raw_dir)
    assert _status(first) == {"pretrain": "ran", "more": "ran"}
    pre, more = first.steps
    assert pre.outputs["model_uri"] == "models:/anima-nano/1" and more.outputs["model_uri"] == "models:/anima-nano/2"
    client = MlflowClient()
    parent = client.get_run(first.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["anima.stage"] == "pipeline"
    for o in first.steps:  # each step is a child run of the pipeline run
        child = client.get_run(o.run_id)
        assert child.data.tags["mlflow.parentRunId"] == first.run_id
        assert child.data.tags["anima.pipeline.step"] == o.step
        assert child.info.status == "FINISHED"
    assert client.get_run(more.run_id).data.tags["anima.parent"].endswith("anima-nano/1")  # init_from resolved
    assert first.champion["uri"] == "models:/anima-nano/2"

    again = _run(raw_dir)  # nothing changed: every step is reused
    assert _status(again) == {"pretrain": "cached", "more": "cached"}
    assert [o.run_id for o in again.steps] == [pre.run_id, more.run_id]

    changed = _run(raw_dir, "more.optim.lr=5e-4")  # one step's override: only that step re-runs
    assert _status(changed) == {"pretrain": "cached", "more": "ran"}
    assert changed.steps[1].reason == "config changed: optim.lr: 0.001 -> 0.0005"  # what differs, by key

    with pytest.raises(AnimaError, match=r"pipeline stopped at step 'more' \(stage pretrain\).*1 step\(s\) before"):
        _run(raw_dir, "more.optim.lr=2e-4", "more.init_from=/nonexistent/model")  # injected failure
    failed = client.search_runs([parent.info.experiment_id], "tags.`anima.stage` = 'pipeline'",
                                order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert failed.info.status == "FAILED" and failed.data.tags["anima.pipeline.failed_step"] == "more"

    resumed = _run(raw_dir, "more.optim.lr=2e-4")  # fixed: resumes at the failed step
    assert _status(resumed) == {"pretrain": "cached", "more": "ran"}

    forced = _run(raw_dir, "more.optim.lr=2e-4", "force=[pretrain]")  # a re-run upstream step re-runs its successors
    assert _status(forced) == {"pretrain": "ran", "more": "ran"}
    assert forced.steps[1].reason == "earlier step pretrain re-ran"
    assert forced.steps[0].run_id != pre.run_id


@pytest.mark.slow
def test_editing_a_data_file_reruns_only_the_steps_that_read_it(project, raw_dir):
    """sft reads a private copy of the chat corpus; one file edited in place: the dry run names it, pretrain
    (which does not read it) is reused, sft re-runs; the file restored: the first sft run is reused again."""
    import shutil

    import torch
    from rich.console import Console

    from anima.pipeline.runner import Runner

    torch.set_num_threads(1)
    chat = project / "chat_raw"
    shutil.copytree(raw_dir / "chatterbot", chat / "chatterbot")
    ov = ["pipeline.name=chat", "pipeline.stages=[pretrain,sft]", "device.threads=1",
          "pretrain.model=nano", "pretrain.trainer=smoke", "pretrain.trainer.max_steps=2",
          "pretrain.trainer.num_samples=0", "pretrain.tracking.log_checkpoints=false",
          "sft.init_from=${step:pretrain.model_uri}", "sft.model=nano", "sft.trainer=smoke",
          "sft.trainer.max_steps=2", "sft.trainer.num_samples=0", "sft.tracking.log_checkpoints=false",
          f"sft.paths.raw_dir={chat}"]

    def run(*extra):
        console = Console(width=400, force_terminal=False, record=True)
        result = Runner(compose_cfg("pipeline", [*ov, *extra], raw_dir), console).run()
        return result, console.export_text()

    first, _ = run()
    assert _status(first) == {"pretrain": "ran", "sft": "ran"}
    emotion = chat / "chatterbot/english/emotion.yml"
    original = emotion.read_bytes()
    emotion.write_bytes(original + b"- - Are you sad?\n  - Only when my data changes.\n")

    plan, text = run("dry_run=true")
    assert _status(plan) == {"pretrain": "cached", "sft": "planned"}
    assert f"sft: re-run (input changed: data source chat_mix.sources.emotion {emotion})" in text, text
    assert "config changed" not in text

    second, text = run()
    assert _status(second) == {"pretrain": "cached", "sft": "ran"}
    assert second.steps[0].run_id == first.steps[0].run_id and second.steps[1].run_id != first.steps[1].run_id
    assert "input changed: data source chat_mix.sources.emotion" in text
    from mlflow import MlflowClient

    sft_run = MlflowClient().get_run(second.steps[1].run_id)
    assert sft_run.info.run_name == "chat/sft" and sft_run.data.tags["anima.pipeline.name"] == "chat"

    emotion.write_bytes(original)  # back to the first content: the first sft run matches again
    third, _ = run()
    assert _status(third) == {"pretrain": "cached", "sft": "cached"}
    assert third.steps[1].run_id == first.steps[1].run_id
