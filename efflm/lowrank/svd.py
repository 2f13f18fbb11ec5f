"""Truncated SVD — the low-rank baseline: replace a Linear by two Linears of rank r.

No paper of its own (the "SVD" row of FWSVD, Hsu et al. ICLR 2022, and of later
low-rank LLM papers). Algorithm: W ≈ U_r Σ_r V_rᵀ, stored as B = U_r Σ_r^½ [out, r] and
A = Σ_r^½ V_rᵀ [r, in]; y = B(Ax). Ranks come from the global parameter budget of
``efflm.lowrank.factorize`` (or one fixed rank for every Linear).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from efflm.core.fields import opt
from efflm.core.registry import MethodConfig, register
from efflm.lowrank.factorize import check_lowrank_config, check_lowrank_for_model, factorizations, install


@dataclass(frozen=True)
class SVDConfig(MethodConfig):
    """Truncated-SVD factorization of every decoder Linear."""

    method = "svd"
    ratio: float = opt(0.2, "fraction of the decoder Linears' parameters removed, in [0, 1); ranks allocated globally")
    rank: int = opt(0, "a fixed rank for every Linear instead (≥ 0; 0: ranks from ratio)")

    def __post_init__(self) -> None:
        check_lowrank_config(self)


@register(
    SVDConfig,
    family="lowrank",
    title="Truncated SVD low-rank factorization (baseline)",
    arxiv=None,
    needs_calibration=False,
    paper="svd-lowrank",
    check=check_lowrank_for_model,
)
def apply(model: nn.Module, config: SVDConfig, calib: Any = None) -> nn.Module:
    for path, linear, A, B in factorizations(model, config, desc="svd"):
        install(model, path, linear, A, B)
    return model
