"""The fast training path: the fused chunked LM-head loss, `device.precision=auto`, the attention and compile
choices, and a bf16-mixed run that trains as well as fp32 at equal steps."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from anima.train.linear_ce import linear_cross_entropy
from anima.train.losses import IGNORE_INDEX, LanguageModelingLoss, token_cross_entropy
from anima.train.module import CausalLMModule, fused_head
from anima.train.precision import (attention_implementation, compile_training, cpu_has_bf16_matrix_units,
                                   resolve_matmul_precision, resolve_precision, validation_attention)
from anima.train.settings import torch_settings
from tests.helpers import NANO_FAST, compose_cfg


def _nano(seed: int = 0):
    from anima.model.build import build_model

    cfg = compose_cfg("pretrain", ["model=nano"]).model
    torch.manual_seed(seed)
    return build_model(cfg), int(cfg.vocab_size)


def _batch(vocab: int, rows: int = 3, length: int = 40):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (rows, length + 1), generator=g)
    labels = ids[:, 1:].clone()
    labels[0, :7] = IGNORE_INDEX  # e.g. a user turn
    return {"input_ids": ids[:, :-1], "labels": labels}


@pytest.mark.parametrize("chunk", [7, 64, 4096])
def test_fused_loss_equals_the_logits_path_in_fp32(chunk):
    model, vocab = _nano()
    batch = _batch(vocab)
    decoder, head = fused_head(model)
    fused = linear_cross_entropy(decoder(input_ids=batch["input_ids"]).last_hidden_state, head.weight,
                                 batch["labels"], chunk)
    fused.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    plain = token_cross_entropy(model(input_ids=batch["input_ids"]).logits, batch["labels"])
    plain.backward()
    assert float(fused) == pytest.approx(float(plain), rel=1e-6)
    for name, p in model.named_parameters():  # the tied embedding gets both the lookup's and the head's grads
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_fused_loss_under_bf16_autocast_is_close_and_keeps_fp32_grads():
    model, vocab = _nano()
    batch = _batch(vocab)
    decoder, head = fused_head(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = linear_cross_entropy(decoder(input_ids=batch["input_ids"]).last_hidden_state, head.weight,
                                     batch["labels"], 32)
    fused.backward()
    exact = token_cross_entropy(model(input_ids=batch["input_ids"]).logits, batch["labels"])
    assert fused.dtype == torch.float32 and float(fused) == pytest.approx(float(exact), rel=2e-2)
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())


def test_compiled_fused_loss_matches_the_eager_one():
    model, vocab = _nano()
    batch = _batch(vocab)
    decoder, head = fused_head(model)
    runs = {}
    for name, autocast, compiled in (("fp32", False, False), ("fp32 compiled", False, True),
                                     ("bf16", True, False), ("bf16 compiled", True, True)):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = linear_cross_entropy(decoder(input_ids=batch["input_ids"]).last_hidden_state, head.weight,
                                        batch["labels"], 32, compiled=compiled)
        loss.backward()
        runs[name] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    exact, exact_grads = runs["fp32"]
    torch.testing.assert_close(runs["fp32 compiled"][0], exact, rtol=1e-5, atol=1e-6)
    for n, g in runs["fp32 compiled"][1].items():
        torch.testing.assert_close(g, exact_grads[n], rtol=1e-4, atol=1e-6, msg=n)

    def error(name: str) -> float:  # worst parameter's gradient error relative to its exact fp32 norm
        return max(float((g - exact_grads[n]).norm() / exact_grads[n].norm()) for n, g in runs[name][1].items())

    # in bf16 inductor may round intermediates differently from eager: as close to fp32 as eager bf16 is
    assert float(runs["bf16 compiled"][0]) == pytest.approx(float(exact), rel=2e-2)
    assert error("bf16 compiled") < max(2 * error("bf16"), 0.02), (error("bf16 compiled"), error("bf16"))


def test_a_batch_without_targets_is_an_error():
    from anima.errors import DataError

    model, vocab = _nano()
    batch = _batch(vocab)
    batch["labels"][:] = IGNORE_INDEX
    decoder, head = fused_head(model)
    with pytest.raises(DataError, match="no target tokens"):
        linear_cross_entropy(decoder(input_ids=batch["input_ids"]).last_hidden_state, head.weight, batch["labels"])


def test_module_fuses_only_when_no_term_needs_the_logits():
    model, vocab = _nano()
    batch = _batch(vocab)
    optim = OmegaConf.create({"compile": False})
    calls = []

    class NeedsLogits:
        name, weight = "probe", 0.5

        def __call__(self, step, batch, logits, module):
            calls.append(logits)
            return logits.float().pow(2).mean() * 0

    module = CausalLMModule(model, [LanguageModelingLoss(1.0)], optim, max_steps=10)
    module.log = lambda *a, **k: None
    fused = module.training_step(batch, 0)
    module.terms.append(NeedsLogits())
    plain = module.training_step(batch, 0)
    assert calls and calls[0] is not None and calls[0].shape[-1] == vocab  # the probe got real logits
    assert float(fused) == pytest.approx(float(plain), rel=1e-6)


def test_the_compiled_loss_is_served_from_the_autograd_cache(tmp_path, monkeypatch):
    """A warm start loads the compiled chunked loss from AOTAutograd's on-disk cache instead of re-tracing and
    re-partitioning it (by default that cache skips graphs with a custom autograd.Function), and the cached
    loss computes the same gradients."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # a cold cache: the first compile must save
    model, vocab = _nano()
    batch = _batch(vocab)
    decoder, head = fused_head(model)
    hidden = decoder(input_ids=batch["input_ids"]).last_hidden_state.detach().requires_grad_()
    grads, cache = [], []
    for _ in range(2):
        torch._dynamo.reset()  # forget the compiled code in memory, as a new process would
        counters.clear()
        hidden.grad = None
        linear_cross_entropy(hidden, head.weight.detach(), batch["labels"], 32, compiled=True).backward()
        grads.append(hidden.grad.clone())
        cache.append(dict(counters["aot_autograd"]))
    assert cache[0].get("autograd_cache_saved") == 1 and not cache[0].get("autograd_cache_bypass")
    assert cache[1].get("autograd_cache_hit") == 1
    torch.testing.assert_close(grads[0], grads[1])


def test_heads_that_are_not_a_plain_linear_are_not_fused():
    model, _ = _nano()
    model.config.final_logit_softcapping = 30.0
    assert fused_head(model) is None
    model.config.final_logit_softcapping = None
    model.lm_head = torch.nn.Sequential(model.lm_head)
    assert fused_head(model) is None


def test_auto_precision_attention_and_compile_follow_the_hardware():
    amx = cpu_has_bf16_matrix_units()
    cpu = OmegaConf.create({"accelerator": "cpu", "precision": "auto", "attention": "auto"})
    assert resolve_precision(cpu) == ("bf16-mixed" if amx else "32-true")
    assert attention_implementation(cpu) == ("eager" if amx else "sdpa")
    assert validation_attention(cpu) == ("sdpa" if amx else None)  # eager only for its faster bf16 backward
    assert validation_attention(OmegaConf.create({**cpu, "attention": "eager"})) is None  # the user's choice
    assert resolve_precision(OmegaConf.create({"accelerator": "cpu", "precision": "32-true"})) == "32-true"
    assert compile_training(compose_cfg("pretrain", ["model=nano", "trainer.max_steps=500"]))  # the default
    auto = "optim.compile=auto"
    assert compile_training(compose_cfg("pretrain", ["model=nano", "trainer.max_steps=500", auto]))  # fp32 too
    exact = ["device.precision=32-true", "device.matmul_precision=highest"]
    assert compile_training(compose_cfg("pretrain", ["model=nano", "trainer.max_steps=500", *exact, auto]))
    assert not compile_training(compose_cfg("pretrain", ["model=nano", "trainer.max_steps=500", auto,
                                                         "device=gpu"]))  # on a CPU only
    assert not compile_training(compose_cfg("pretrain", ["model=nano", "trainer.max_steps=10", auto]))  # too short
    assert not compile_training(compose_cfg("sft", ["model=nano", "trainer.max_steps=500", auto]))  # varying shapes
    assert compile_training(compose_cfg("pretrain", ["model=nano", "trainer.max_steps=10", "optim.compile=true"]))


@pytest.mark.parametrize("bf16_units, expected", [(True, "medium"), (False, "highest")])
def test_auto_matmul_precision_takes_bf16_kernels_only_where_the_cpu_has_bf16_units(monkeypatch, bf16_units,
                                                                                     expected):
    """On an AVX-512 CPU without bf16 units (Xeon Ice Lake) oneDNN still takes `medium`'s matmuls, slower than
    MKL's exact fp32 ones, so `auto` asks for them only where bf16 units exist; a run applies it and restores."""
    monkeypatch.setattr("anima.train.precision.cpu_has_bf16_matrix_units", lambda: bf16_units)
    cpu = compose_cfg("pretrain", ["model=nano"]).device
    assert cpu.matmul_precision == "auto"  # device=cpu's preset
    assert resolve_matmul_precision(cpu) == expected
    assert resolve_matmul_precision(compose_cfg("pretrain", ["model=nano", "device=gpu"]).device) == "high"
    assert resolve_matmul_precision(OmegaConf.create({**cpu, "matmul_precision": "medium"})) == "medium"
    before = torch.get_float32_matmul_precision()
    with torch_settings(cpu):
        assert torch.get_float32_matmul_precision() == expected
    assert torch.get_float32_matmul_precision() == before


def test_validation_runs_sdpa_and_training_gets_its_eager_attention_back():
    """Validation is forward-only, where SDPA is faster than eager attention on a CPU: the module switches for
    the validation pass alone, and scores exactly what eager attention scores."""
    import lightning as L

    model, vocab = _nano()
    model.set_attn_implementation("eager")
    rows = [{k: v[i:i + 1] for k, v in _batch(vocab).items()} for i in range(3)]
    batches = torch.utils.data.DataLoader(rows, batch_size=None)  # one row a batch
    seen = []
    model.model.register_forward_pre_hook(lambda *_: seen.append(model.config._attn_implementation))
    losses = {}
    for val_attention in (None, "sdpa"):
        module = CausalLMModule(model, [LanguageModelingLoss(1.0)], OmegaConf.create({"compile": False}), 10,
                                val_attention=val_attention)
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                            enable_checkpointing=False)
        losses[val_attention] = trainer.validate(module, batches, verbose=False)[0]["val/loss"]
        assert model.config._attn_implementation == "eager"  # training's again
    assert seen == ["eager"] * 3 + ["sdpa"] * 3
    assert losses["sdpa"] == pytest.approx(losses[None], rel=1e-5)


@pytest.mark.slow
def test_bf16_mixed_trains_as_well_as_fp32_at_equal_steps(raw_dir, project):
    """Same seed, data and steps: bf16 autocast (fp32 master weights) reaches the fp32 run's val loss within
    noise, and the run records the precision it used."""
    import mlflow

    from anima.stages.train import train

    common = [*NANO_FAST, "trainer.max_steps=40", "trainer.batch_size=8", "trainer.val_every=40",
              "trainer.val_batches=8", "registry.register=false", "optim.warmup_steps=5", "optim.lr=3e-3"]
    fp32 = train(compose_cfg("pretrain", [*common, "device.precision=32-true"], raw_dir))
    bf16 = train(compose_cfg("pretrain", [*common, "device.precision=bf16-mixed"], raw_dir))
    start = 6.2  # ln(512): the nano model's loss at initialisation
    assert fp32.metrics["val/loss"] < start - 0.5  # it learned something, so the comparison means something
    assert bf16.metrics["val/loss"] == pytest.approx(fp32.metrics["val/loss"], abs=0.05)
    params = mlflow.get_run(bf16.run_id).data.params
    assert params["device.precision_used"] == "bf16-mixed"
    assert mlflow.get_run(fp32.run_id).data.params["device.precision_used"] == "32-true"
    assert params["device.matmul_precision_used"] == ("medium" if cpu_has_bf16_matrix_units() else "highest")
