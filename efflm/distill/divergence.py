"""Token-level divergences between a teacher's and a student's next-token distributions, the math
shared by the distillation papers: Hinton et al.'s knowledge distillation (arXiv 1503.02531:
forward KL at a temperature), reverse KL (MiniLLM, arXiv 2306.08543) and GKD's generalized
Jensen–Shannon divergence (arXiv 2306.13649).

Every function takes student and teacher logits ``[tokens, vocab]`` (any float dtype, computed
in fp32) and an optional ``mask [tokens]`` of the tokens that count, and returns the mean over
counted tokens (a 0-dim tensor, differentiable in the student's logits).

* ``forward_kl``: KL(P_teacher ‖ Q_student) at temperature τ, times τ² (Hinton: keeps the
  gradients' scale as τ changes); mode-covering.
* ``reverse_kl``: KL(Q_student ‖ P_teacher), mode-seeking.
* ``generalized_jsd``: with M = β·P + (1 − β)·Q, JSD(β) = β·KL(P ‖ M) + (1 − β)·KL(Q ‖ M).
  Both terms vanish as β → 0 or 1; as in GKD's reference code (and trl's), β = 0 is defined as
  the forward KL and β = 1 as the reverse KL, the limits of JSD(β)/β and JSD(β)/(1 − β).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from efflm.core.errors import ConfigError


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    if temperature <= 0:
        raise ConfigError(f"distillation temperature must be > 0, got {temperature}")
    return F.log_softmax(logits.float() / temperature, dim=-1)


def _mean(per_token: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return per_token.mean()
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per token from log-probabilities (terms where p = 0 contribute 0)."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)


def forward_kl(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """τ² · KL(softmax(teacher/τ) ‖ softmax(student/τ)), averaged over tokens."""
    per = _kl(_log_probs(teacher, temperature), _log_probs(student, temperature))
    return _mean(per, mask) * temperature**2


def reverse_kl(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """KL(softmax(student/τ) ‖ softmax(teacher/τ)), averaged over tokens."""
    return _mean(_kl(_log_probs(student, temperature), _log_probs(teacher, temperature)), mask)


def generalized_jsd(
    student: torch.Tensor,
    teacher: torch.Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """GKD's JSD(β) between the teacher P and the student Q (β = 0: forward KL, β = 1: reverse KL)."""
    if not 0 <= beta <= 1:
        raise ConfigError(f"generalized JSD: beta must be in [0, 1], got {beta}")
    log_p, log_q = _log_probs(teacher, temperature), _log_probs(student, temperature)
    if beta == 0:
        return _mean(_kl(log_p, log_q), mask)
    if beta == 1:
        return _mean(_kl(log_q, log_p), mask)
    log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1 - beta)]), dim=0)
    per = beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)
    return _mean(per, mask)
