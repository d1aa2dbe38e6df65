"""End to end on the real demo data: pretrain nano -> sft from a registry alias (qa template) -> distill into a
fresh nano with kd + persona_guard; the template travels with the model, lineage tags name the parents and
datasets, bad init_from / teacher inputs fail with one clear line."""

from __future__ import annotations

import json
import os

import pytest
import torch

from anima.errors import ModelError
from tests.helpers import NANO_FAST, compose_cfg

pytestmark = pytest.mark.slow

FAST = [*NANO_FAST, "trainer.max_steps=4", "trainer.val_every=2", "trainer.val_batches=2", "device.threads=1"]


@pytest.fixture(scope="module")
def parent(raw_dir, tmp_path_factory):
    """A pretrained nano registered as models:/anima-nano/1 in a private project root."""
    root = tmp_path_factory.mktemp("sft")
    old = os.environ.get("ANIMA_ROOT")
    os.environ["ANIMA_ROOT"] = str(root)
    torch.set_num_threads(1)
    from anima.stages.train import train

    result = train(compose_cfg("pretrain", FAST, raw_dir))
    yield root, result
    if old is None:
        os.environ.pop("ANIMA_ROOT", None)
    else:
        os.environ["ANIMA_ROOT"] = old


def _version_tags(name: str, version: str) -> dict:
    import mlflow

    return dict(mlflow.MlflowClient().get_model_version(name, version).tags)


def test_sft_from_registry_alias_with_qa_template(parent, raw_dir):
    import mlflow

    from anima.tokenizer.chat_template import get_template
    from anima.generation.engine import ChatEngine
    from anima.stages.train import train

    root, pre = parent
    cfg = compose_cfg("sft", [*FAST, "init_from=models:/anima-nano@latest", "chat.template=qa", "optim.lr=1e-3"],
                      raw_dir)
    result = train(cfg)
    assert result.version == "2"
    for key in ("val/ppl", "val/loss", "persona/ppl", "persona/loss"):
        assert key in result.metrics and result.metrics[key] > 1.0, key
    run = mlflow.get_run(result.run_id)
    assert "train/lm" in run.data.metrics and run.data.params["data.chat_template"] == "qa"
    history = mlflow.MlflowClient().get_metric_history(result.run_id, "persona/ppl")
    assert len(history) >= 2  # logged at every evaluation
    # the template is saved with the model, and chat uses it
    model_dir = result.model_dir
    assert json.loads((model_dir / "anima.json").read_text())["chat_template"] == "qa"
    conf = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert conf["chat_template"] == get_template("qa").chat_template
    assert conf["add_bos_token"] is True and conf["add_eos_token"] is False  # what its tokenizer.json does
    parent_tok = json.loads((pre.model_dir / "tokenizer.json").read_text())["model"]["vocab"]
    assert json.loads((model_dir / "tokenizer.json").read_text())["model"]["vocab"] == parent_tok  # not retrained
    engine = ChatEngine(model_dir)
    assert engine.template_name == "qa"
    # lineage
    tags = _version_tags("anima-nano", result.version)
    assert tags["parent"] == "models:/anima-nano/1" and tags["stage"] == "sft" and tags["chat_template"] == "qa"
    assert tags["datasets"].startswith("chat_mix@") and tags["tokenizer_from"] == "init_from"
    assert float(tags["persona_ppl"]) > 1.0
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["chat_mix"]


def test_bad_init_from_and_teacher_fail_with_one_line(parent, raw_dir, tmp_path):
    from anima.stages.train import train
    from tests.helpers.models import build_nano_model_dir

    with pytest.raises(ModelError, match=r"no alias 'best'; aliases: .*@latest") as e:
        train(compose_cfg("sft", [*FAST, "init_from=models:/anima-nano@best"], raw_dir))
    assert "\n" not in str(e.value)
    with pytest.raises(ModelError, match=r"differs from model=tiny: hidden_size: 144 != 64"):
        train(compose_cfg("sft", [*NANO_FAST[1:], "model=tiny", "init_from=models:/anima-nano/1"], raw_dir))
    other = build_nano_model_dir(tmp_path / "other", vocab_size=420, seed=3)
    with pytest.raises(ModelError, match=r"teacher=.* and the student tokenizer differ: .*distill.mode=sequence"):
        train(compose_cfg("distill", [*FAST, f"teacher={other}", "init_from=models:/anima-nano/1"], raw_dir))
    with pytest.raises(ModelError, match=r"has vocab_size 4\d\d but the student has 512 \(set model.vocab_size="):
        train(compose_cfg("distill", [*FAST, f"teacher={other}"], raw_dir))  # student takes the teacher's tokenizer


def test_distill_with_kd_and_persona_guard_into_a_fresh_student(parent, raw_dir):
    import mlflow

    from anima.stages.train import train

    cfg = compose_cfg("distill", [*FAST, "teacher=models:/anima-nano/1", "loss=distill_guard",
                                  "loss.persona_guard.every=2", "loss.kd.cache_top_k=16", "trainer.max_steps=5"],
                      raw_dir)
    result = train(cfg)
    run = mlflow.get_run(result.run_id)
    for key in ("train/kd", "train/lm", "train/persona_guard", "train/persona_guard_ce", "train/persona_guard_kl",
                "persona/ppl", "val/ppl"):
        assert key in run.data.metrics, key
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(result.run_id, "train/persona_guard_ce")]
    assert steps == [0, 2, 4]  # only on guard steps
    tags = _version_tags(result.registered_name, result.version)
    assert tags["teacher"] == "models:/anima-nano/1" and "parent" not in tags  # fresh student: no parent
    assert tags["tokenizer_from"] == "teacher" and tags["stage"] == "distill"
    assert "chat_mix@" in tags["datasets"] and "persona_train" in tags["persona_data"]


def test_distill_generate_only_produces_the_teacher_pairs(parent, raw_dir):
    import mlflow

    from anima.stages.train import train

    cfg = compose_cfg("distill", [*FAST, "teacher=models:/anima-nano/1", "distill.mode=generate",
                                  "distill.max_prompts=3", "sampling.max_new_tokens=6"], raw_dir)
    result = train(cfg)
    path = result.model_dir
    assert (path / "train.jsonl").is_file() and (path / "manifest.json").is_file()
    lines = (path / "train.jsonl").read_text().splitlines()
    assert len(lines) == int(result.metrics["distill/pairs"]) == 3
    run = mlflow.get_run(result.run_id)
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"chat_mix", path.parent.name}
    assert run.data.tags["anima.teacher"] == "models:/anima-nano/1"
