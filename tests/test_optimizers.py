"""optim=muon: Muon on the hidden matrices and AdamW on the rest, presented to Lightning as one optimizer."""

from __future__ import annotations

import pytest
import torch

from anima.config.groups import OptimConfig
from anima.model.build import build_model
from anima.train import optimizers
from anima.train.optimizers import MuonAdamW, build_optimizer, hidden_matrices, newton_schulz_dtype, orthogonalize
from tests.helpers import compose_cfg


def _nano(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(compose_cfg("pretrain", ["model=nano"]).model)


def _step(model, optimizer, scheduler=None) -> None:
    x = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    model(input_ids=x, labels=x).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    if scheduler is not None:
        scheduler.step()


def test_muon_takes_the_block_matrices_and_adamw_the_embedding_and_norms():
    model = _nano()
    hidden = hidden_matrices(model)
    names = {n for n, p in model.named_parameters() if id(p) in hidden}
    assert names and all(".layers." in n and n.endswith(".weight") for n in names)
    assert not any("embed" in n or "norm" in n for n in names)
    optimizer = build_optimizer(model, OptimConfig(name="muon"), fused=False)
    assert isinstance(optimizer, MuonAdamW)
    assert {id(p) for p in optimizer.muon.param_groups[0]["params"]} == hidden
    assert all(p.dim() == 2 for p in optimizer.muon.param_groups[0]["params"])
    assert isinstance(build_optimizer(model, OptimConfig(), fused=False), torch.optim.AdamW)


def test_one_optimizer_steps_exactly_as_torch_muon_and_adamw_side_by_side():
    cfg = OptimConfig(name="muon", lr=3e-3)
    a, b = _nano(), _nano()
    combined = build_optimizer(a, cfg, fused=False)
    combined.muon.ns_dtype = torch.bfloat16  # torch's Muon always iterates in bf16
    hidden = hidden_matrices(b)
    muon = torch.optim.Muon([p for p in b.parameters() if id(p) in hidden], lr=cfg.lr, weight_decay=cfg.weight_decay,
                            momentum=cfg.muon_momentum, adjust_lr_fn="match_rms_adamw")
    rest = [p for p in b.parameters() if id(p) not in hidden]
    adamw = torch.optim.AdamW([{"params": [p for p in rest if p.dim() >= 2], "weight_decay": cfg.weight_decay},
                               {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}],
                              lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=False)
    for _ in range(3):
        _step(a, combined)
        x = torch.randint(0, b.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
        b(input_ids=x, labels=x).loss.backward()
        muon.step()
        adamw.step()
        muon.zero_grad()
        adamw.zero_grad()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        # bit for bit on the Xeon it was written on; a CPU's batched bf16 matmul may round unlike its single one
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-5, msg=name)


def test_newton_schulz_runs_in_bf16_only_where_the_hardware_has_bf16_units(monkeypatch):
    monkeypatch.setattr(optimizers, "cpu_has_bf16_matrix_units", lambda: False)
    assert newton_schulz_dtype(torch.device("cpu")) == torch.float32
    assert build_optimizer(_nano(), OptimConfig(name="muon"), fused=False).muon.ns_dtype == torch.float32
    monkeypatch.setattr(optimizers, "cpu_has_bf16_matrix_units", lambda: True)
    assert newton_schulz_dtype(torch.device("cpu")) == torch.bfloat16


def test_fp32_newton_schulz_orthogonalizes_like_torchs_bf16_one():
    g = torch.randn(96, 32, generator=torch.Generator().manual_seed(0))
    coefficients, steps, eps = (3.4445, -4.7750, 2.0315), 5, 1e-7
    in_fp32, in_bf16 = (orthogonalize(g, coefficients, steps, eps, dtype) for dtype in (torch.float32, torch.bfloat16))
    assert in_fp32.dtype == torch.float32 and in_fp32.shape == g.shape
    singular = torch.linalg.svdvals(in_fp32)
    assert singular.min() > 0.5 and singular.max() < 1.5  # near-orthogonal: what the update is for
    assert torch.allclose(in_fp32, in_bf16.float(), atol=0.05)
    before = g.clone()
    orthogonalize(g, coefficients, steps, eps, torch.float32)
    assert torch.equal(g, before)  # the momentum buffer it is given stays as it was


def test_a_stack_of_same_shape_matrices_orthogonalizes_like_each_one_alone():
    gen = torch.Generator().manual_seed(0)
    for shape in ((5, 48, 16), (3, 16, 48)):  # tall ones are transposed inside, wide ones not
        stack = torch.randn(*shape, generator=gen) * torch.tensor([1.0, 30.0, 1e-3, 2.0, 0.5])[:shape[0], None, None]
        together = orthogonalize(stack, (3.4445, -4.7750, 2.0315), 5, 1e-7, torch.float32)
        alone = torch.stack([orthogonalize(m, (3.4445, -4.7750, 2.0315), 5, 1e-7, torch.float32) for m in stack])
        assert together.shape == stack.shape
        torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)  # each matrix normalised by its own norm


def test_the_schedule_scales_both_rules_and_the_state_round_trips():
    model = _nano()
    optimizer = build_optimizer(model, OptimConfig(name="muon", lr=1e-2), fused=False)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    for _ in range(2):
        _step(model, optimizer, scheduler)
    assert [g["lr"] for g in optimizer.muon.param_groups + optimizer.adamw.param_groups] == \
        pytest.approx([2.5e-3] * 3)
    assert len(optimizer.state) == sum(1 for p in model.parameters())  # every parameter has its state
    for p in model.parameters():  # reading the joint state never plants a key in the other optimizer's
        assert optimizer.state[p] is (optimizer.muon if p in optimizer.muon.state else optimizer.adamw).state[p]
    assert len(optimizer.muon.state) == len(optimizer.muon.param_groups[0]["params"])

    saved = optimizer.state_dict()
    again = build_optimizer(model, OptimConfig(name="muon", lr=1e-2), fused=False)
    again.load_state_dict(saved)
    for p in model.parameters():
        for k, v in optimizer.state[p].items():
            assert torch.equal(torch.as_tensor(again.state[p][k]), torch.as_tensor(v)), k
    assert [g["lr"] for g in again.param_groups] == [g["lr"] for g in optimizer.param_groups]
