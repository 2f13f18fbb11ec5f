"""LoSparse: Structured Compression of Large Language Models based on Low-Rank and Sparse Approximation.

arXiv 2306.11222 (Li, Yu, Zhang, Liang, He, Chen, Zhao; ICML 2023).
Algorithm: W ≈ BA + S. Initialize the low-rank part from the SVD of W; the sparse matrix S
holds the residual W − BA, pruned to the entries of highest sensitivity |S_ij · ∂L/∂S_ij|,
so S captures what low rank cannot (incoherent, outlier-like entries) and BA what pruning
cannot (the coherent part).
Differences from the reference code: one shot, no fine-tuning — the paper prunes S
iteratively while training; here the sensitivity uses calibration gradients once
(|R_ij| · sqrt(F_ij), F the squared LM-loss gradients, which are ∂L/∂S at S = R), S keeps
``density`` of each matrix's entries, and ranks come from the shared global budget with
S's values and int32 column indices counted against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from efflm.calib.gradients import check_grad_len, linear_gradients
from efflm.core.errors import ConfigError
from efflm.core.fields import opt
from efflm.core.registry import MethodConfig, register
from efflm.lowrank.factorize import check_lowrank_config, check_lowrank_for_model, factorizations, install
from efflm.models.arch import decoder_linears


def sparse_residual(R: torch.Tensor, fisher: torch.Tensor, density: float) -> torch.Tensor:
    """R with all but its round(density · numel) most sensitive entries (|R|·sqrt(F)) zeroed."""
    k = round(R.numel() * density)
    out = torch.zeros_like(R)
    if k:
        idx = torch.topk((R.abs() * fisher.float().sqrt()).flatten(), k).indices
        out.view(-1)[idx] = R.flatten()[idx]
    return out


@dataclass(frozen=True)
class LoSparseConfig(MethodConfig):
    """Low-rank + sparse factorization of every decoder Linear."""

    method = "losparse"
    ratio: float = opt(
        0.2,
        "fraction of the decoder Linears' parameters removed, in [0, 1), counting each kept sparse entry as "
        "two (value and column index)",
    )
    density: float = opt(
        0.02, "share of each matrix's entries kept in the sparse residual, in [0, 1); 2·density < 1 − ratio"
    )
    rank: int = opt(0, "a fixed rank for every Linear instead (≥ 0; 0: ranks from ratio)")
    grad_len: int = opt(128, "tokens of each calibration window the sensitivity's gradients use (≥ 2)")

    def __post_init__(self) -> None:
        check_grad_len(self)
        check_lowrank_config(self)
        if not 0 <= self.density < 1:
            raise ConfigError(f"losparse: density must be in [0, 1), got {self.density}")
        if 2 * self.density >= 1 - self.ratio:
            raise ConfigError(
                f"losparse: density {self.density} leaves no budget for the low-rank part at ratio "
                f"{self.ratio} (need 2·density < 1 − ratio)"
            )


@register(
    LoSparseConfig,
    family="lowrank",
    title="LoSparse: Low-Rank and Sparse Approximation of LLMs",
    arxiv="2306.11222",
    needs_calibration=True,
    paper="losparse",
    check=check_lowrank_for_model,
)
def apply(model: torch.nn.Module, config: LoSparseConfig, calib: Any) -> torch.nn.Module:
    fisher = linear_gradients(model, calib, squares=True, max_len=config.grad_len, desc="losparse: fisher")
    extra = {
        p: 2 * round(lin.weight.numel() * config.density) + lin.out_features + 1  # values, cols, row ptrs
        for p, lin in decoder_linears(model)
    }
    for path, linear, A, B in factorizations(model, config, desc="losparse", extra=extra):
        W = linear.weight.data.float()
        install(model, path, linear, A, B, sparse_residual(W - B @ A, fisher.pop(path), config.density))
    return model
