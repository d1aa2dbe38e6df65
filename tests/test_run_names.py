"""Readable run names: `<stage>-<model>-<data>` plus the settings a person tells runs apart by; never a path,
a URI or a secret; an explicit run_name wins."""

from __future__ import annotations

import pytest

from anima.tracking.names import fmt, run_name, short_model
from tests.helpers import compose_cfg

SECRET = "hunter2-sentinel"

# (stage, overrides, expected name)
TABLE = [
    ("sft", ["optim.lr=3e-4"], "sft-tiny-chat_mix-lr=3e-4"),
    ("sft", [], "sft-tiny-chat_mix-lr=3e-4"),
    ("pretrain", [], "pretrain-tiny-shakespeare-lr=5e-3"),
    ("pretrain", ["model=nano", "trainer=smoke", "seed=7"], "pretrain-nano-shakespeare-lr=5e-3-steps=4-bs=2-seed=7"),
    ("pretrain", ["optim.lr=0.001", "trainer.max_steps=50", "seed=1337"], "pretrain-tiny-shakespeare-lr=1e-3-steps=50"),
    ("sft", ["init_from=models:/anima-tiny/3", "data.rehearsal.ratio=0.3"],
     "sft-tiny-chat_mix-from=anima-tiny/3-lr=3e-4-rehearsal=0.3"),
    ("sft", ["init_from=/home/me/models/best", "data=persona_hamlet"], "sft-tiny-persona_hamlet-lr=3e-4"),
    ("sft", ["model=hf", "model.path=/srv/models/qwen", "model.lora.r=8"], "sft-hf-chat_mix-lr=3e-4-lora=8"),
    ("sft", ["init_from=runs:/0123456789abcdef/model"], "sft-tiny-chat_mix-from=run-01234567-lr=3e-4"),
    ("distill", ["teacher=models:/anima-small@champion", "loss.kd.weight=0.5"],
     "distill-tiny-chat_mix-teacher=anima-small@champion-lr=3e-4-kd=0.5"),
    ("eval", [], "eval-anima-tiny@candidate"),
    ("eval", ["model=models:/anima-small/2", "compare=models:/anima-small@champion"],
     "eval-anima-small/2-vs=anima-small@champion"),
    ("promote", [], "promote-anima-tiny"),
    ("promote", ["registry.name=anima-nano", "version=3"], "promote-anima-nano-v3"),
    ("merge", ["merge.method=ties"], "merge-anima-tiny-ties"),
    ("data", ["data=chat_mix"], "data-chat_mix"),
    ("tokenizer", [], "tokenizer-shakespeare"),
    ("retrain", [], "retrain-anima-tiny@champion"),
    ("synth", ["synth.name=replies", f"teacher.base_url=http://u:{SECRET}@127.0.0.1:9/v1"], "synth-replies-anima-tiny"),
    ("sweep", [f"sweep.storage=postgresql://u:{SECRET}@db:5432/optuna"], "sweep-pretrain_lr"),
    ("sweep", ["sweep.study_name=arch-1"], "sweep-arch-1"),
]


@pytest.mark.parametrize("stage,overrides,expected", TABLE)
def test_run_name_table(project, stage, overrides, expected):
    cfg = compose_cfg(stage, overrides)
    name = run_name(cfg, overrides)
    assert name == expected
    assert "/home" not in name and "/srv" not in name and "://" not in name and SECRET not in name


def test_short_forms():
    assert fmt(3e-4) == "3e-4" and fmt(1.5e-3) == "1.5e-3" and fmt(0.5) == "0.5" and fmt(200) == "200"
    assert short_model("models:/anima-tiny@champion") == "anima-tiny@champion"
    assert short_model("/abs/dir") is None and short_model("./rel") is None and short_model("s3://b/k") is None


def test_explicit_run_name_wins_and_stage_run_uses_the_builder(project):
    import mlflow

    from anima.tracking.run import stage_run

    cfg = compose_cfg("promote", ["registry.name=anima-nano"])
    with stage_run(cfg, overrides=["registry.name=anima-nano"]) as run:
        pass
    assert mlflow.get_run(run.info.run_id).info.run_name == "promote-anima-nano"
    cfg = compose_cfg("promote", ["run_name=my-run"])
    with stage_run(cfg, overrides=["run_name=my-run"]) as run:
        pass
    assert mlflow.get_run(run.info.run_id).info.run_name == "my-run"
