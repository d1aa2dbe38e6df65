"""Divergences between a teacher and a student distribution, given as log-probabilities over the vocabulary.

Inputs are log-probabilities (``log_softmax`` outputs) of shape ``[..., V]``; ``-inf`` entries are allowed
(a teacher restricted to its cached top-k tokens) and contribute ``0 * log 0 = 0``. Every function returns
the per-position divergence ``[...]`` in nats, so the caller decides how to average (over assistant tokens).

* forward KL  KL(p_T || p_S) = sum p_T (log p_T - log p_S)   -- mass-covering (classic Hinton KD)
* reverse KL  KL(p_S || p_T)                                -- mode-seeking (MiniLLM)
* JSD_beta    beta KL(p_T || M) + (1-beta) KL(p_S || M),  M = beta p_T + (1-beta) p_S
              (beta = 0.5: the symmetric Jensen-Shannon divergence, bounded by log 2)
"""

from __future__ import annotations

import math

import torch

KINDS = ("forward_kl", "reverse_kl", "jsd")


def kl(p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per position; positions where p is 0 contribute nothing (even where q is 0 too)."""
    p = p_logp.exp()
    diff = torch.where(p > 0, p_logp - q_logp, torch.zeros_like(p_logp))
    return (p * diff).sum(-1)


def jsd(t_logp: torch.Tensor, s_logp: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Generalised Jensen-Shannon divergence with mixture weight ``beta`` on the teacher."""
    if not 0.0 < beta < 1.0:
        raise ValueError(f"jsd beta must be in (0, 1), got {beta}")
    m_logp = torch.logsumexp(torch.stack([t_logp + math.log(beta), s_logp + math.log(1.0 - beta)]), dim=0)
    return beta * kl(t_logp, m_logp) + (1.0 - beta) * kl(s_logp, m_logp)


def divergence(kind: str, t_logp: torch.Tensor, s_logp: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """The divergence ``kind`` (forward_kl | reverse_kl | jsd) per position."""
    if kind == "forward_kl":
        return kl(t_logp, s_logp)
    if kind == "reverse_kl":
        return kl(s_logp, t_logp)
    if kind == "jsd":
        return jsd(t_logp, s_logp, beta)
    raise ValueError(f"unknown divergence {kind!r}; expected one of {', '.join(KINDS)}")


def distill_loss(kind: str, teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0,
                 beta: float = 0.5) -> torch.Tensor:
    """Mean divergence over positions between temperature-scaled distributions, times T^2.

    The T^2 factor keeps the gradient scale of the soft targets comparable across temperatures (Hinton et al.),
    so `loss.kd.weight` means the same thing at T=1 and T=4. Computed in float32 whatever the logits' dtype.
    """
    t = float(temperature)
    t_logp = torch.log_softmax(teacher_logits.float() / t, dim=-1)
    s_logp = torch.log_softmax(student_logits.float() / t, dim=-1)
    return divergence(kind, t_logp, s_logp, beta).mean() * (t * t)
