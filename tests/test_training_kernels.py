"""The kernels compiled fp32 training swaps in: `sdpa_blocks` attention and the rotary table. Each must give the
gradients of what it replaces, leave everything it does not cover to the original, and leave saved models alone."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from anima.train.causal_attention import _CausalFlashAttention, sdpa_blocks_attention
from anima.train.precision import attention_implementation, cpu_has_bf16_matrix_units, set_attention
from anima.train.rotary_table import RotaryTable, use_rotary_table
from tests.helpers import compose_cfg


def _qkv(tokens: int, dtype=torch.float32, heads: int = 3, kv_heads: int = 3, query_tokens: int | None = None):
    g = torch.Generator().manual_seed(tokens)
    shape = lambda h, t: (2, h, t, 16)  # noqa: E731
    q = torch.randn(shape(heads, query_tokens or tokens), generator=g, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(shape(kv_heads, tokens), generator=g, dtype=dtype, requires_grad=True) for _ in range(2))
    return q, k, v


@pytest.mark.parametrize("tokens", [1, 64, 100, 256])
def test_block_backward_gives_sdpas_output_and_gradients(tokens):
    """The output is SDPA's own kernel's; the gradients agree with SDPA's backward to fp32 rounding, at lengths
    that are and are not multiples of the block."""
    q, k, v = _qkv(tokens)
    ours = _CausalFlashAttention.apply(q, k, v, 0.3)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3)
    assert torch.equal(ours, ref)
    grad = torch.randn_like(ref)
    for mine, theirs in zip(torch.autograd.grad(ours, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)


def test_block_backward_passes_gradcheck_in_float64():
    q, k, v = _qkv(70, torch.float64, heads=1, kv_heads=1)  # two blocks, the second partial
    assert torch.autograd.gradcheck(lambda a, b, c: _CausalFlashAttention.apply(a, b, c, 0.25), (q, k, v))


class _Attention(torch.nn.Module):
    is_causal, num_key_value_groups = True, 1


@pytest.mark.parametrize("case", ["mask", "gqa", "kv-cache", "dropout", "not causal"])
def test_what_the_block_backward_does_not_cover_goes_to_sdpa(case, monkeypatch):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = _Attention().train()
    q, k, v = _qkv(32, heads=4 if case == "gqa" else 3, kv_heads=2 if case == "gqa" else 3,
                   query_tokens=1 if case == "kv-cache" else None)
    module.num_key_value_groups = q.shape[1] // k.shape[1]
    mask = torch.ones(1, 1, 32, 32, dtype=torch.bool).tril() if case == "mask" else None
    kwargs = {"dropout": 0.1} if case == "dropout" else {"is_causal": False} if case == "not causal" else {}
    calls = []
    monkeypatch.setattr(_CausalFlashAttention, "apply", lambda *a: calls.append(a))
    torch.manual_seed(0)
    out, _ = sdpa_blocks_attention(module, q, k, v, mask, **kwargs)
    torch.manual_seed(0)
    ref, _ = sdpa_attention_forward(module, q, k, v, mask, **kwargs)
    assert calls == [] and torch.equal(out, ref)


def test_a_compiled_model_trains_with_sdpa_blocks_as_with_sdpa():
    """The whole nano model under torch.compile: loss and every parameter's gradient as with SDPA."""
    from anima.model.build import build_model

    cfg = compose_cfg("pretrain", ["model=nano"]).model
    ids = torch.randint(0, int(cfg.vocab_size), (2, 48), generator=torch.Generator().manual_seed(3))
    runs = {}
    for attention in ("sdpa", "sdpa_blocks"):
        torch.manual_seed(0)
        model = build_model(cfg).train()
        set_attention(model, attention)
        use_rotary_table(model.model, int(cfg.max_seq_len))
        loss = torch.compile(model)(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        runs[attention] = loss.detach(), {n: p.grad for n, p in model.named_parameters()}
        assert model.config._attn_implementation == attention
    torch.testing.assert_close(runs["sdpa_blocks"][0], runs["sdpa"][0], rtol=1e-5, atol=1e-6)
    for name, grad in runs["sdpa_blocks"][1].items():
        torch.testing.assert_close(grad, runs["sdpa"][1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_auto_picks_sdpa_blocks_only_for_compiled_fp32_cpu_training():
    cpu = OmegaConf.create({"accelerator": "cpu", "precision": "auto", "attention": "auto"})
    amx = cpu_has_bf16_matrix_units()
    assert attention_implementation(cpu, compiled=True) == ("eager" if amx else "sdpa_blocks")
    fp32 = OmegaConf.create({**cpu, "precision": "32-true"})
    assert (attention_implementation(fp32, compiled=True), attention_implementation(fp32)) == ("sdpa_blocks", "sdpa")
    assert attention_implementation(OmegaConf.create({**fp32, "accelerator": "gpu"}), compiled=True) == "sdpa"
    assert attention_implementation(OmegaConf.create({**fp32, "attention": "sdpa"}), compiled=True) == "sdpa"


def test_rotary_table_gives_the_modules_values_in_training_and_defers_in_eval(tmp_path, monkeypatch):
    from anima.model.build import build_model, load_model_dir

    cfg = compose_cfg("pretrain", ["model=nano"]).model
    model = build_model(cfg)
    original = model.model.rotary_emb
    keys = set(model.state_dict())
    assert use_rotary_table(model.model, 32) and isinstance(model.model.rotary_emb, RotaryTable)
    assert use_rotary_table(model.model, 32) and model.model.rotary_emb.rotary is original  # not wrapped twice
    table = model.model.rotary_emb.train()
    x, positions = torch.zeros(1), torch.tensor([[0, 5, 31, 2, 0]])  # packed rows restart their positions
    for mine, theirs in zip(table(x, positions), original(x, positions)):
        assert torch.equal(mine, theirs)
    seen = []
    monkeypatch.setattr(original, "forward", lambda *a: seen.append(a) or (None, None))
    table.eval()(x, torch.tensor([[40]]))  # beyond the table: generation asks the module itself
    assert len(seen) == 1
    monkeypatch.undo()
    assert set(model.state_dict()) == keys  # derived buffers, not weights
    model.save_pretrained(tmp_path)
    assert "rotary" not in json.dumps(json.loads((tmp_path / "config.json").read_text()))
    assert load_model_dir(tmp_path).config._attn_implementation == "sdpa"


def test_only_default_rope_gets_a_table():
    from anima.model.build import build_model

    model = build_model(compose_cfg("pretrain", ["model=nano"]).model)
    model.model.rotary_emb.rope_type = "dynamic"
    assert not use_rotary_table(model.model, 32)
    assert not isinstance(model.model.rotary_emb, RotaryTable)
