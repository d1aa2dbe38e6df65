"""KL / reverse KL / JSD against hand computations; temperature and T^2 scaling; -inf (top-k) supports."""

from __future__ import annotations

import math

import pytest
import torch

from anima.train.divergences import distill_loss, divergence, jsd, kl

P = [0.5, 0.5]
Q = [0.9, 0.1]


def _logp(probs):
    return torch.tensor(probs, dtype=torch.float64).log()


def test_kl_by_hand():
    # KL(P||Q) = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1)
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert float(kl(_logp(P), _logp(Q))) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.5108256, rel=1e-6)
    # reverse: KL(Q||P) = 0.9 ln(0.9/0.5) + 0.1 ln(0.1/0.5)
    reverse = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert float(divergence("reverse_kl", _logp(P), _logp(Q))) == pytest.approx(reverse, rel=1e-12)
    assert float(divergence("forward_kl", _logp(P), _logp(Q))) == pytest.approx(expected, rel=1e-12)


def test_jsd_by_hand():
    m = [0.7, 0.3]  # (P + Q) / 2
    expected = 0.5 * sum(p * math.log(p / mm) for p, mm in zip(P, m)) + \
        0.5 * sum(q * math.log(q / mm) for q, mm in zip(Q, m))
    got = float(jsd(_logp(P), _logp(Q), 0.5))
    assert got == pytest.approx(expected, rel=1e-12)
    assert got == pytest.approx(float(jsd(_logp(Q), _logp(P), 0.5)), rel=1e-12)  # symmetric at beta 0.5
    # beta = 0.25 on the teacher: M = 0.25 P + 0.75 Q
    m2 = [0.25 * p + 0.75 * q for p, q in zip(P, Q)]
    expected2 = 0.25 * sum(p * math.log(p / mm) for p, mm in zip(P, m2)) + \
        0.75 * sum(q * math.log(q / mm) for q, mm in zip(Q, m2))
    assert float(divergence("jsd", _logp(P), _logp(Q), 0.25)) == pytest.approx(expected2, rel=1e-12)
    # bounded by ln 2 even for disjoint supports
    disjoint = float(jsd(torch.tensor([0.0, float("-inf")]), torch.tensor([float("-inf"), 0.0])))
    assert disjoint == pytest.approx(math.log(2), rel=1e-6)


def test_zero_probabilities_contribute_nothing():
    t = torch.tensor([math.log(0.25), math.log(0.75), float("-inf")])
    s = torch.tensor([math.log(0.5), math.log(0.25), math.log(0.25)])
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.25)
    assert float(kl(t, s)) == pytest.approx(expected, rel=1e-6)
    assert float(kl(t, t)) == 0.0


def test_temperature_and_t_squared():
    teacher = torch.tensor([[2.0, 0.0, -1.0]])
    student = torch.tensor([[0.5, 0.5, 0.0]])
    for temp in (1.0, 2.0, 4.0):
        pt = torch.softmax(teacher / temp, -1).double()
        ps = torch.softmax(student / temp, -1).double()
        by_hand = float((pt * (pt.log() - ps.log())).sum()) * temp ** 2
        assert float(distill_loss("forward_kl", teacher, student, temp)) == pytest.approx(by_hand, rel=1e-5)
    # mean over positions
    two = distill_loss("reverse_kl", torch.cat([teacher, student]), torch.cat([student, student]), 1.0)
    one = distill_loss("reverse_kl", teacher, student, 1.0)
    assert float(two) == pytest.approx(float(one) / 2, rel=1e-6)
    assert float(distill_loss("jsd", teacher, teacher, 3.0)) == pytest.approx(0.0, abs=1e-5)


def test_gradients_are_finite_with_a_sparse_teacher():
    teacher = torch.tensor([[3.0, 1.0, float("-inf"), float("-inf")]])
    student = torch.randn(1, 4, requires_grad=True)
    for kind in ("forward_kl", "jsd"):
        student.grad = None
        distill_loss(kind, teacher, student, 2.0).backward()
        assert torch.isfinite(student.grad).all()


def test_unknown_kind():
    with pytest.raises(ValueError, match="forward_kl, reverse_kl, jsd"):
        divergence("tvd", _logp(P), _logp(Q))
