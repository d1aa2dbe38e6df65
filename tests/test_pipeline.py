"""Pipeline spec: composition of presets and command-line overrides, step references, errors (no training)."""

from __future__ import annotations

import pytest

from anima.errors import ConfigError
from tests.helpers import compose_cfg


def _spec(cfg):
    from anima.pipeline.spec import pipeline_spec

    return pipeline_spec(cfg)


def _steps(overrides):
    from omegaconf import OmegaConf

    from anima.pipeline.spec import parse_steps

    cfg = compose_cfg("pipeline", overrides)
    return {s.name: s for s in parse_steps(_spec(cfg), OmegaConf.to_container(cfg, resolve=False))}


def test_per_step_override_from_command_line(project):
    steps = _steps(["experiment=demo", "sft.optim.lr=2e-5", "sft.trainer.max_steps=7", "pretrain.model=nano"])
    assert list(steps) == ["pretrain", "sft", "distill", "sweep", "merge", "eval", "promote"]
    assert steps["sft"].overrides["optim.lr"] == 2e-5
    assert steps["sft"].overrides["trainer.max_steps"] == 7
    assert steps["sft"].overrides["init_from"] == "${step:pretrain.model_uri}"
    assert steps["pretrain"].overrides["model"] == "nano"
    assert steps["merge"].stage == "merge"


def test_custom_step_names_and_stage_of(project):
    steps = _steps(["pipeline.stages=[pretrain,more]", "pipeline.stage_of={more:pretrain}",
                    "+more.init_from=${step:pretrain.model_uri}", "pretrain.model=nano"])
    assert steps["more"].stage == "pretrain"
    assert steps["more"].overrides == {"init_from": "${step:pretrain.model_uri}"}


@pytest.mark.parametrize("overrides, message", [
    ([], "pipeline.stages is empty"),
    (["pipeline.stages=[pretrain,nosuch]"], "'nosuch' is not a stage"),
    (["pipeline.stages=[pretrain]", "sft.optim.lr=1e-4"], "sft: overrides given for 'sft'"),
    (["pipeline.stages=[pretrain]", "force=[merge]"], "force=[merge]: not a step"),
    (["pipeline.stages=[pretrain,pretrain]"], "lists 'pretrain' twice"),
])
def test_spec_errors_name_the_key(project, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _steps(overrides)


def test_unknown_top_level_key_fails_at_composition(project):
    with pytest.raises(ConfigError, match="sfft"):
        compose_cfg("pipeline", ["experiment=demo", "sfft.optim.lr=1"])


def test_references_substitute_and_explain_missing_outputs():
    from anima.pipeline.refs import find_refs, substitute

    outputs = {"pretrain": {"model_uri": "models:/anima-nano/3", "run_id": "abc"}}
    assert substitute("${step:pretrain.model_uri}", outputs, "sft.init_from") == "models:/anima-nano/3"
    assert substitute("${step:pretrain}", outputs, "x") == "models:/anima-nano/3"  # model_uri by default
    assert substitute(["a", "runs:/${step:pretrain.run_id}/model"], outputs, "x") == ["a", "runs:/abc/model"]
    assert find_refs({"a": ["${step:sft.model_uri}"]}) == [("sft", "model_uri")]
    with pytest.raises(ConfigError, match="sft.init_from: step 'pretrain' produced no 'dataset'"):
        substitute("${step:pretrain.dataset}", outputs, "sft.init_from")
    with pytest.raises(ConfigError, match="refers to step 'sft', which has not run before"):
        substitute("${step:sft.model_uri}", outputs, "eval.model")


def test_overrides_render_as_hydra_command_line(project):
    from anima.pipeline.runner import step_overrides
    from anima.pipeline.spec import Step

    cfg = _spec(compose_cfg("pipeline", ["pipeline.stages=[sweep]", "device.threads=1"]))
    step = Step("sweep", "sweep", {"sweep.overrides": ["model=nano", "init_from=${step:pretrain.model_uri}"],
                                   "merge.tags": {"stage": "sft"}, "optim.lr": 1e-3, "run_name": "a b"})
    ov = step_overrides(cfg, step, {"pretrain": {"model_uri": "models:/anima-nano/1"}})
    assert "sweep.overrides=['model=nano','init_from=models:/anima-nano/1']" in ov
    assert "merge.tags={stage:sft}" in ov and "optim.lr=0.001" in ov and "run_name='a b'" in ov
    assert "device.threads=1" in ov and any(o.startswith("paths.root=") for o in ov)
    # a step that picks its own device group is not overridden by the pipeline's device keys
    ov = step_overrides(cfg, Step("p", "pretrain", {"device": "gpu"}), {})
    assert "device=gpu" in ov and not any(o.startswith("device.") for o in ov)


def test_preset_narrows_a_sweep_search_space_keeping_its_other_fields(project):
    """The demo narrows sft_lr's learning-rate bounds; the parameter's type and log scale still come from
    conf/sweep/sft_lr.yaml, and the other parameters are left as they are."""
    from anima.pipeline.runner import compose_step, step_overrides

    cfg = compose_cfg("pipeline", ["experiment=demo"])
    step = _steps(["experiment=demo"])["sweep"]
    uri = {"model_uri": "models:/anima-tiny/1"}
    sweep = compose_step(step, step_overrides(_spec(cfg), step, {"pretrain": uri, "sft": uri})).sweep
    assert dict(sweep.params.optim.lr) == {"type": "float", "low": 3.0e-4, "high": 1.5e-3, "log": True}
    assert sweep.params.optim.warmup_steps.high == 40 and sweep.params.loss.persona_guard.weight.high == 0.5


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["demo", "arianna", "persona_distill"])
def test_presets_compose_every_step(project, raw_dir, preset):
    """Every step of every preset composes and validates against its stage's schema (outputs stand-ins)."""
    from anima.pipeline.runner import Runner

    cfg = compose_cfg("pipeline", [f"experiment={preset}"], raw_dir)
    runner = Runner(cfg)
    runner.preflight()
    assert runner.steps and cfg.pipeline.description


def test_group_choice_with_keys_and_duplicate_keys():
    from anima.pipeline.spec import flatten_overrides

    flat = flatten_overrides({"defaults": {"merge": "soup"}, "merge": {"top_k": 3}, "model": "nano"})
    assert flat == {"merge": "soup", "merge.top_k": 3, "model": "nano"}
    with pytest.raises(ConfigError, match="sweep.n_trials is set twice"):
        flatten_overrides({"sweep.n_trials": 3, "sweep": {"n_trials": 5}}, where="sweep.")


def test_command_line_replaces_a_nested_preset_list(project):
    steps = _steps(["experiment=demo", "sweep.sweep.overrides=['model=nano']", "merge.merge.top_k=2"])
    assert steps["sweep"].overrides["sweep"] == "sft_lr"
    assert steps["sweep"].overrides["sweep.overrides"] == ["model=nano"]
    assert steps["merge"].overrides["merge.top_k"] == 2 and steps["merge"].overrides["merge"] == "soup"
