"""End to end: compose the real configs with the nano model, pretrain on the real plays into a temporary
MLflow store, load the registered version back through every URI form and generate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import NANO_FAST, compose_cfg

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pretrained(raw_dir, tmp_path_factory):
    import os

    root = tmp_path_factory.mktemp("pretrain")
    old = os.environ.get("ANIMA_ROOT")
    os.environ["ANIMA_ROOT"] = str(root)
    from anima.stages.train import train

    cfg = compose_cfg("pretrain", [*NANO_FAST, "trainer.max_steps=6", "trainer.val_every=3"], raw_dir)
    result = train(cfg)
    yield root, cfg, result
    if old is None:
        os.environ.pop("ANIMA_ROOT", None)
    else:
        os.environ["ANIMA_ROOT"] = old


def test_run_logs_the_tracking_contract(pretrained):
    import mlflow

    root, cfg, result = pretrained
    run = mlflow.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.dim"] == "64" and run.data.params["optim.lr"] == "0.005" and run.data.params["optim.name"] == "muon"
    assert int(run.data.params["model.n_parameters"]) > 0
    tags = run.data.tags
    assert tags["anima.stage"] == "pretrain" and len(tags["mlflow.source.git.commit"]) >= 7
    assert tags["anima.git_dirty"] in ("true", "false") and tags["anima.command"].startswith("anima pretrain")
    for key in ("val/loss", "val/ppl", "val/bpc", "train/loss"):
        assert key in run.data.metrics, key
    client = mlflow.MlflowClient()
    history = client.get_metric_history(result.run_id, "train/loss")
    assert [m.step for m in history] == sorted(m.step for m in history) and len(history) >= 1
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "overrides.txt", "model", "samples"} <= artifacts
    model_files = {Path(a.path).name for a in client.list_artifacts(result.run_id, "model")}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer.model", "anima.json"} <= model_files
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["shakespeare"]
    assert run.inputs.dataset_inputs[0].dataset.digest == tags["anima.data_fingerprint"][:36]


def test_registered_version_carries_lineage_tags(pretrained):
    import mlflow

    _, _, result = pretrained
    mv = mlflow.MlflowClient().get_model_version("anima-nano", result.version)
    for key in ("stage", "val_ppl", "data_fingerprint", "config_hash", "git_commit"):
        assert mv.tags.get(key), key
    assert float(mv.tags["val_ppl"]) == pytest.approx(result.metrics["val/ppl"])


def test_every_uri_form_resolves_and_generates(pretrained):
    from anima.model.build import load_model_dir
    from anima.model.resolve import resolve_model
    from anima.tokenizer.hf import load_tokenizer

    _, cfg, result = pretrained
    uris = [f"models:/anima-nano/{result.version}", "models:/anima-nano@latest", f"runs:/{result.run_id}/model",
            str(result.model_dir)]
    paths = {resolve_model(u, cfg.tracking).path.resolve() for u in uris[:3]}
    assert len(paths) == 1
    model = load_model_dir(resolve_model(uris[0], cfg.tracking).path)
    tok = load_tokenizer(resolve_model(uris[3], cfg.tracking).path)
    ids = torch.tensor([tok.encode("ROMEO:\n")])
    out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == ids.shape[1] + 5


def test_unknown_alias_lists_what_exists(pretrained):
    from anima.errors import ModelError
    from anima.model.resolve import resolve_model

    _, cfg, _ = pretrained
    with pytest.raises(ModelError, match="has no alias 'champion'"):
        resolve_model("models:/anima-nano@champion", cfg.tracking)
    with pytest.raises(ModelError, match="no registered model 'nope'.*anima-nano"):
        resolve_model("models:/nope/1", cfg.tracking)


def test_init_from_a_different_architecture_is_refused(pretrained):
    from anima.errors import ModelError
    from anima.stages.train import train

    _, cfg, result = pretrained
    bad = compose_cfg("pretrain", [*NANO_FAST, "model.dim=32", f"init_from={result.model_uri}",
                                   f"paths.raw_dir={cfg.paths.raw_dir}"])
    with pytest.raises(ModelError, match="hidden_size: 32 != 64"):
        train(bad)
