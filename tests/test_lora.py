"""LoRA on a plain local Hugging Face Llama dir: only adapters train, the saved/registered model is merged
(no peft keys), reloads without peft and gives the adapted model's logits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from anima.errors import ConfigError, ModelError
from tests.helpers.models import build_nano_model_dir


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    """A standard HF causal-LM dir (config, safetensors, tokenizer.json): no anima.json, no tokenizer.model."""
    d = build_nano_model_dir(tmp_path_factory.mktemp("hf") / "tiny-llama", vocab_size=400, seed=2)
    (d / "anima.json").unlink()
    (d / "tokenizer.model").unlink()
    return d


def _lora_cfg(**over):
    base = {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    return OmegaConf.create({**base, **over})


def test_only_adapters_train_and_merge_reproduces_the_adapted_model(hf_dir, tmp_path):
    from anima.model.build import load_model_dir
    from anima.train.lora import apply_lora, trainable_parameters

    torch.manual_seed(0)
    base = load_model_dir(hf_dir)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    model = apply_lora(base, _lora_cfg())
    trainable, total = trainable_parameters(model)
    assert 0 < trainable < total / 10
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randint(4, 300, (2, 16))
    for _ in range(3):
        logits = model(input_ids=x).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        adapted = model(input_ids=x).logits
    merged = model.merged_for_save()
    assert not any("lora" in k for k in merged.state_dict())
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=x).logits, adapted, atol=1e-5)
    # targets changed, everything else is the base model's
    state = merged.state_dict()
    assert not torch.equal(state["model.layers.0.self_attn.q_proj.weight"],
                           original["model.layers.0.self_attn.q_proj.weight"])
    for key in ("model.layers.0.self_attn.k_proj.weight", "model.layers.0.mlp.up_proj.weight",
                "model.embed_tokens.weight"):
        assert torch.equal(state[key], original[key]), key
    # merging a copy leaves the training model intact (still a peft model with adapters)
    assert any("lora_" in n for n, _ in model.named_parameters())
    merged.save_pretrained(tmp_path / "m", safe_serialization=True)
    with torch.no_grad():
        assert torch.allclose(load_model_dir(tmp_path / "m")(input_ids=x).logits, adapted, atol=1e-5)


def test_unknown_target_module_names_what_exists(hf_dir):
    from anima.model.build import load_model_dir
    from anima.train.lora import apply_lora

    with pytest.raises(ConfigError, match=r"model.lora.target_modules=\['qkv'\]: qkv not in the model .*q_proj"):
        apply_lora(load_model_dir(hf_dir), _lora_cfg(target_modules=["qkv"]))


@pytest.mark.slow
def test_sft_with_lora_saves_and_registers_the_merged_model(hf_dir, raw_dir, project):
    import lightning as L
    import mlflow

    from anima.model.build import load_model_dir
    from anima.stages.train import train
    from tests.helpers import compose_cfg

    torch.set_num_threads(1)

    class Grab(L.Callback):
        def on_train_end(self, trainer, pl_module):
            self.peft = pl_module.model

    grab = Grab()
    cfg = compose_cfg("sft", ["model=hf", f"model.path={hf_dir}", "model.lora.r=4", "model.lora.dropout=0.1",
                              "model.max_seq_len=96", "trainer=smoke", "tracking.log_checkpoints=false",
                              "optim.lr=5e-3", "device.threads=1"], raw_dir)
    result = train(cfg, callbacks=[grab])
    assert result.registered_name == "anima-hf" and result.version == "1"
    run = mlflow.get_run(result.run_id)
    assert int(run.data.params["model.n_trainable_parameters"]) < int(run.data.params["model.n_parameters"]) / 10
    saved = load_model_dir(result.model_dir)
    assert type(saved).__name__ == "LlamaForCausalLM"
    assert not any("lora" in k for k in saved.state_dict())
    x = torch.randint(4, 300, (1, 12))
    grab.peft.eval()
    with torch.no_grad():
        assert torch.allclose(saved(input_ids=x).logits, grab.peft(input_ids=x).logits, atol=1e-5)
    assert (result.model_dir / "anima.json").is_file()  # the training template travels with it
    base = load_model_dir(hf_dir)
    assert not torch.equal(saved.state_dict()["model.layers.1.self_attn.v_proj.weight"],
                           base.state_dict()["model.layers.1.self_attn.v_proj.weight"])
    tags = dict(mlflow.MlflowClient().get_model_version("anima-hf", "1").tags)
    assert tags["parent"] == str(hf_dir.resolve()) and tags["tokenizer_from"] == "model.path"


def test_lora_on_an_anima_preset_is_refused(project):
    from anima.config.stage_schemas import TrainConfig
    from anima.config.typed import typed
    from anima.train.initial_model import initial_model
    from tests.helpers import compose_cfg

    spec = typed(compose_cfg("sft", ["model=nano", "model.lora.r=4"]), TrainConfig)
    with pytest.raises(ModelError, match="model.lora.r=4 needs model=hf"):
        initial_model(spec, None)
    assert os.environ["ANIMA_ROOT"] == str(project)
