"""SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot.

arXiv 2301.00774 (Frantar, Alistarh; ICML 2023).
Algorithm: per Linear, H = 2XXᵀ from calibration inputs, dampened, and U the upper Cholesky
factor of H⁻¹. Walk the columns left to right in blocks of 128: at the start of a block
(or of every M-column run for N:M) choose the mask by the OBS saliency w² / U[i,i]²; for
each column zero its masked weights and spread the error over the columns to its right
(w -= err · U[i, i:] / U[i,i]), lazily across blocks — GPTQ's update with a mask instead
of a grid. Layers in order, and by default each group of Linears inside a layer too.
Differences from the reference code: the mask of a block takes exactly round(s · rows ·
block) weights (top-k, not a threshold, so ties cannot change the sparsity); when Cholesky
fails even at raised damping the layer falls back to magnitude pruning and the run records
it (GPTQ's policy, with magnitude as the no-Hessian fallback).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from efflm.calib.hessian import Hessian, inverse_cholesky, mask_dead_columns
from efflm.calib.layerwise import hessian_groups, note, run
from efflm.calib.sweep import sweep
from efflm.core.errors import ConfigError
from efflm.core.fields import opt
from efflm.core.registry import register
from efflm.prune.masks import SparsityConfig, check_sparsity_for_model, nm_mask, parse_pattern, prune_mask


def block_mask(score: torch.Tensor, sparsity: float, row_splits: list[int] | None = None) -> torch.Tensor:
    """Prune mask of one block: exactly round(numel · sparsity) lowest scores over all its rows,
    counted separately in each run of rows of ``row_splits`` (stacked Linears sharing one H)."""
    parts = []
    for s in score.split(row_splits or [score.shape[0]]):
        k = round(s.numel() * sparsity)
        mask = torch.zeros(s.numel(), dtype=torch.bool, device=s.device)
        if k:
            mask[torch.topk(s.flatten(), k, largest=False).indices] = True
        parts.append(mask.reshape(s.shape))
    return torch.cat(parts)


def sparsegpt_prune(
    W: torch.Tensor,
    H: torch.Tensor,
    sparsity: float,
    pattern: str = "unstructured",
    damp: float = 0.01,
    block_size: int = 128,
    row_splits: list[int] | None = None,
) -> tuple[torch.Tensor, dict]:
    """Pruned, reconstructed weight (float32, same shape) and an info dict (info["fallback"]).

    ``row_splits``: row counts of Linears stacked into ``W`` (they share H); each gets the sparsity."""
    W = W.float().clone()
    out, cols = W.shape
    H = mask_dead_columns(W, H)
    U, lam = inverse_cholesky(H, damp)
    if U is None:
        return W.masked_fill(prune_mask(W.abs(), sparsity, pattern), 0), {"fallback": "magnitude"}
    nm = parse_pattern(pattern)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        n = i2 - i1
        W1 = W[:, i1:i2].clone(memory_format=torch.contiguous_format)
        U1 = U[i1:i2, i1:i2].contiguous()
        d2 = torch.diag(U1) ** 2
        err1 = torch.zeros_like(W1)
        if nm is None:  # one mask for the whole block, then one sweep
            sweep(W1, U1, 0, n, err1, mask=block_mask(W1**2 / d2, sparsity, row_splits))
        else:  # every M-column run's mask is chosen from its current (updated) values
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
            for i in range(0, n, nm[1]):
                mask1[:, i : i + nm[1]] = nm_mask(W1[:, i : i + nm[1]] ** 2 / d2[i : i + nm[1]], *nm)
                sweep(W1, U1, i, min(i + nm[1], n), err1, mask=mask1)
        W[:, i1:i2] = W1
        W[:, i2:] -= err1 @ U[i1:i2, i2:]
    return W, {"damp": lam}


@dataclass(frozen=True)
class SparseGPTConfig(SparsityConfig):
    """One-shot pruning with Hessian-based reconstruction of the remaining weights (sparsity,
    pattern: see SparsityConfig)."""

    method = "sparsegpt"
    dampening: float = opt(0.01, "fraction of mean(diag H) added to the Hessian's diagonal before Cholesky, in (0, 1)")
    block_size: int = opt(
        128, "columns per block: the mask is chosen and the error fed forward per block; a multiple of M for N:M"
    )
    true_sequential: bool = opt(
        True,
        "one forward per layer over the whole calibration batch, each group of Linears pruned as the forward "
        "reaches it; false: llm-compressor's order (observe the layer in batches of 4, prune, forward again)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.dampening < 1:
            raise ConfigError(f"sparsegpt: dampening must be in (0, 1), got {self.dampening}")
        nm = parse_pattern(self.pattern)
        if self.block_size < 1 or (nm is not None and self.block_size % nm[1]):
            raise ConfigError(f"sparsegpt: block_size must be a positive multiple of M, got {self.block_size}")


@register(
    SparseGPTConfig,
    family="prune",
    title="SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot",
    arxiv="2301.00774",
    needs_calibration=True,
    paper="sparsegpt",
    check=check_sparsity_for_model,
    layerwise=True,
)
def apply(model: torch.nn.Module, config: SparseGPTConfig, calib: Any) -> torch.nn.Module:
    def solve(i: int, layer: torch.nn.Module, observers: dict) -> None:
        for paths, H in hessian_groups(observers):  # Linears sharing an input share H: one stacked matrix
            linears = [model.get_submodule(p) for p in paths]
            rows = [lin.out_features for lin in linears]
            W, info = sparsegpt_prune(
                torch.cat([lin.weight.data for lin in linears]),
                H,
                config.sparsity,
                config.pattern,
                config.dampening,
                config.block_size,
                rows,
            )
            if info.get("fallback"):
                note(model, f"sparsegpt: Cholesky failed for {', '.join(paths)}; magnitude pruning used")
            for linear, w in zip(linears, W.split(rows)):
                linear.weight.data.copy_(w)

    hessian = lambda path, linear: Hessian(linear.in_features, stats=False)  # noqa: E731
    return run(model, calib, hessian, solve, desc="sparsegpt", one_pass=config.true_sequential, select=config.selects)
