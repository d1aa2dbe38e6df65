"""Sample generations logged at each validation: anima's own decode where it runs the model, `generate` else."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from anima.train import callbacks
from tests.helpers import compose_cfg

TOKENIZER = SimpleNamespace(pad_token_id=0, decode=lambda ids, skip_special_tokens=True: " ".join(map(str, ids)))
PROMPTS = [[5, 6, 7, 8], [9, 10, 11, 12, 13, 14]]


def _nano():
    from anima.model.build import build_model

    torch.manual_seed(0)
    return build_model(compose_cfg("pretrain", ["model=nano"]).model)


def test_greedy_samples_equal_generates_and_keep_the_training_state(monkeypatch):
    model = _nano()
    model.train()
    greedy = SimpleNamespace(temperature=0.0, top_p=1.0, top_k=0)
    rng = torch.get_rng_state()
    assert callbacks._plain_llama(model)
    fast = callbacks.generate_samples(model, TOKENIZER, PROMPTS, 12, greedy, seed=0)
    assert model.training and torch.equal(torch.get_rng_state(), rng)  # training RNG and mode untouched
    monkeypatch.setattr(callbacks, "_plain_llama", lambda m: False)
    assert callbacks.generate_samples(model, TOKENIZER, PROMPTS, 12, greedy, seed=0) == fast
    assert all(len(s.split("⟶")[1].split()) > 0 for s in fast)


def test_sampled_samples_repeat_with_the_seed():
    model = _nano()
    sampled = SimpleNamespace(temperature=0.9, top_p=0.95, top_k=0)
    first = callbacks.generate_samples(model, TOKENIZER, PROMPTS, 16, sampled, seed=3)
    assert callbacks.generate_samples(model, TOKENIZER, PROMPTS, 16, sampled, seed=3) == first
    assert callbacks.generate_samples(model, TOKENIZER, PROMPTS, 16, sampled, seed=4) != first


def test_a_lora_model_samples_through_generate():
    from anima.config.groups import LoraConfig
    from anima.train.lora import apply_lora

    model = apply_lora(_nano(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert not callbacks._plain_llama(model)  # the adapters live outside the plain weights the fast decode reads
    out = callbacks.generate_samples(model, TOKENIZER, PROMPTS, 4, SimpleNamespace(temperature=0.0, top_p=1.0,
                                                                                   top_k=0), seed=0)
    assert len(out) == 2
