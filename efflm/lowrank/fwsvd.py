"""Fisher-weighted SVD (FWSVD): Language Model Compression with Weighted Low-rank Factorization.

Hsu, Hua, Tang, Lin, Shen, Jin (ICLR 2022; arXiv 2207.00112).
Algorithm: estimate the Fisher information of every weight as the squared gradient of the
task loss summed over data, F_ij = Σ (∂L/∂W_ij)²; give each output row the importance
I_i = sqrt(Σ_j F_ij); factorize diag(I)·W by SVD and undo the scaling in the left factor,
so rank is spent where the loss is sensitive: min ‖diag(I)(W − BA)‖_F.
Differences from the reference code: the loss is the language-modelling loss on the
calibration windows (the paper uses the downstream task's loss); ranks per Linear come from
the shared global budget (factorize.py), allocated on the weighted spectra.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from efflm.calib.gradients import check_grad_len, linear_gradients
from efflm.core.fields import opt
from efflm.core.registry import MethodConfig, register
from efflm.lowrank.factorize import check_lowrank_config, check_lowrank_for_model, factorizations, install


def fisher_row_importance(fisher: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """I_i = sqrt(Σ_j F_ij) per output row, floored at eps · mean so no row gets weight zero."""
    imp = fisher.float().sum(dim=1).sqrt()
    return imp.clamp_min(eps * imp.mean().clamp_min(1e-30))


@dataclass(frozen=True)
class FWSVDConfig(MethodConfig):
    """Fisher-weighted SVD of every decoder Linear (Fisher from calibration gradients)."""

    method = "fwsvd"
    ratio: float = opt(0.2, "fraction of the decoder Linears' parameters removed, in [0, 1); ranks allocated globally")
    rank: int = opt(0, "a fixed rank for every Linear instead (≥ 0; 0: ranks from ratio)")
    grad_len: int = opt(128, "tokens of each calibration window the Fisher estimate's gradients use (≥ 2)")

    def __post_init__(self) -> None:
        check_grad_len(self)
        check_lowrank_config(self)


@register(
    FWSVDConfig,
    family="lowrank",
    title="Language Model Compression with Weighted Low-rank Factorization (FWSVD)",
    arxiv="2207.00112",
    needs_calibration=True,
    paper="language-model-compression-weighted-low-rank",
    check=check_lowrank_for_model,
)
def apply(model: torch.nn.Module, config: FWSVDConfig, calib: Any) -> torch.nn.Module:
    fisher = linear_gradients(model, calib, squares=True, max_len=config.grad_len, desc="fwsvd: fisher")
    importance = {path: fisher_row_importance(fisher.pop(path)) for path in list(fisher)}
    for path, linear, A, B in factorizations(model, config, desc="fwsvd", row_weights=importance):
        install(model, path, linear, A, B)
    return model
