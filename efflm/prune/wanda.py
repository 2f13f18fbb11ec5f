"""Wanda: A Simple and Effective Pruning Approach for Large Language Models.

arXiv 2306.11695 (Sun, Liu, Bair, Kolter; ICLR 2024).
Algorithm: score every weight by |W_ij| · ‖X_j‖₂, the weight's magnitude times the L2 norm
of its input channel over all calibration tokens; in each output row (or each N:M run)
zero the lowest scores. No weight update. Layers are pruned in order, each one calibrated
on the outputs of the already-pruned layers before it.
Differences from the reference code: the norms come from the shared layer-by-layer runner
(one observer per input group, so q/k/v and gate/up share one pass); no "variant" search.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from efflm.calib.layerwise import run
from efflm.core.registry import register
from efflm.prune.masks import SparsityConfig, check_sparsity_for_model, prune_mask


def wanda_score(W: torch.Tensor, sq_norm: torch.Tensor) -> torch.Tensor:
    """|W| · ‖X_j‖₂ for weight [out, in] and per-input squared norms Σ x_j² [in]."""
    return W.abs().float() * sq_norm.sqrt().unsqueeze(0)


class SquaredNorm:
    """Running Σ x_j² per input channel over every calibration token (Wanda's statistic)."""

    def __init__(self, n_in: int):
        self.sq = torch.zeros(n_in, dtype=torch.float64)

    def add(self, x: torch.Tensor) -> None:
        self.sq = self.sq.to(x.device)  # the statistic lives where the activations do (no copy when there)
        self.sq += x.reshape(-1, x.shape[-1]).double().pow(2).sum(dim=0)


@dataclass(frozen=True)
class WandaConfig(SparsityConfig):
    """Prune by |weight| × input-activation norm; calibration data, no weight update
    (sparsity, pattern: see SparsityConfig)."""

    method = "wanda"


@register(
    WandaConfig,
    family="prune",
    title="Wanda: A Simple and Effective Pruning Approach for LLMs",
    arxiv="2306.11695",
    needs_calibration=True,
    paper="simple-effective-pruning-approach-large-language",
    check=check_sparsity_for_model,
    layerwise=True,
)
def apply(model: torch.nn.Module, config: WandaConfig, calib: Any) -> torch.nn.Module:
    def solve(i: int, layer: torch.nn.Module, observers: dict) -> None:
        for path, obs in observers.items():
            w = model.get_submodule(path).weight.data
            w.masked_fill_(prune_mask(wanda_score(w, obs.sq.float()), config.sparsity, config.pattern), 0)

    observe = lambda path, linear: SquaredNorm(linear.in_features)  # noqa: E731
    return run(model, calib, observe, solve, desc="wanda", select=config.selects)
