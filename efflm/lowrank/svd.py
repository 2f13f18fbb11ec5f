"""Truncated SVD — the low-rank baseline: replace a Linear by two Linears of rank r.

No paper of its own (the "SVD" row of FWSVD, Hsu et al. ICLR 2022, and of later
low-rank LLM papers). Algorithm: W ≈ U_r Σ_r V_rᵀ, stored as B = U_r Σ_r^½ [out, r] and
A = Σ_r^½ V_rᵀ [r, in]; y = B(Ax). A global parameter budget picks each Linear's rank:
singular components of all Linears are taken greedily by the share of their matrix's
energy (σ²/‖W‖²_F) per parameter they cost (in + out), until the kept parameters reach
(1 − ratio) of the decoder Linears'; a Linear whose rank reaches in·out/(in + out) stays
dense. (Equal relative error for every matrix, also tried, was far worse on SmolLM2:
perplexity 10.3M against 158k at 20%.)
This file also holds the shared machinery of the low-rank family: weighted factorization
(row weights, FWSVD) and the per-layer rank allocation.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn

from efflm.core.errors import ConfigError
from efflm.core.progress import progress
from efflm.core.registry import MethodConfig, register
from efflm.lowrank.linear import LowRankLinear
from efflm.models.arch import decoder_linears, in_features, out_features, set_module


def weighted_svd(W: torch.Tensor, row_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Thin SVD (U, S, Vh) of diag(r)·W (r = row_weight, default 1)."""
    W = W.float()
    return torch.linalg.svd(W if row_weight is None else row_weight.float().unsqueeze(1) * W, full_matrices=False)


def factorize(W: torch.Tensor, rank: int, row_weight: torch.Tensor | None = None,
              svd: tuple[torch.Tensor, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(A [rank, in], B [out, rank]) minimizing ‖diag(r)(W − BA)‖_F (r = row_weight, default 1);
    ``svd``: a precomputed ``weighted_svd(W, row_weight)``."""
    r = torch.ones(W.shape[0]) if row_weight is None else row_weight.float()
    U, S, Vh = svd if svd is not None else weighted_svd(W, row_weight)
    root = S[:rank].sqrt()
    return root.unsqueeze(1) * Vh[:rank], (U[:, :rank] * root) / r.unsqueeze(1)


def breakeven_rank(n_in: int, n_out: int) -> int:
    """The rank at which two factors hold as many parameters as the dense matrix."""
    return n_in * n_out // (n_in + n_out)


def allocate_ranks(spectra: dict[str, torch.Tensor], shapes: dict[str, tuple[int, int]], keep_params: float,
                   extra: dict[str, float] | None = None) -> dict[str, int | None]:
    """Rank per Linear (None: stays dense) so the kept parameters are at most ``keep_params``.

    Greedy over all matrices' singular components by the share of their matrix's energy
    (σ²/‖W‖²_F) per parameter they cost (in + out); a layer's components come in order, and
    one whose rank reaches in·out/(in + out) stays dense (charged in·out). ``spectra``:
    singular values (descending) of each (weighted) matrix; ``extra``: parameters a
    factorized layer holds besides its factors (LoSparse's sparse part).
    """
    extra = extra or {}
    rank = {p: 1 for p in spectra}
    used = sum(shapes[p][0] + shapes[p][1] + extra.get(p, 0) for p in spectra)

    def cost(p: str, r: int) -> int:  # parameters added by going from rank r to r + 1
        n_in, n_out = shapes[p]
        dense = r + 1 >= breakeven_rank(n_in, n_out)  # that rank is no smaller than the matrix: keep it dense
        return n_in * n_out - r * (n_in + n_out) - extra.get(p, 0) if dense else n_in + n_out

    heap = []
    for p, s in spectra.items():
        energy = (s.double() ** 2) / (s.double() ** 2).sum().clamp_min(1e-30)
        heap += [(-float(e) / (shapes[p][0] + shapes[p][1]), p, i)
                 for i, e in enumerate(energy[1:breakeven_rank(*shapes[p])].tolist(), 1)]
    heapq.heapify(heap)
    while heap:
        _, p, i = heapq.heappop(heap)
        if i != rank[p] or used + cost(p, i) > keep_params:
            continue  # a layer's components come in order; an overflowing one ends that layer
        used += cost(p, i)
        rank[p] += 1
    return {p: (None if r >= breakeven_rank(*shapes[p]) else r) for p, r in rank.items()}


def check_lowrank_config(cfg: Any) -> None:
    if not 0 <= cfg.ratio < 1:
        raise ConfigError(f"{cfg.method}: ratio (fraction of decoder Linear parameters removed) must be in [0, 1), "
                          f"got {cfg.ratio}")
    if cfg.rank < 0:
        raise ConfigError(f"{cfg.method}: rank must be positive, or 0 to choose ranks from ratio, got {cfg.rank}")


def check_lowrank_for_model(hf_config: Any, cfg: Any) -> None:
    """A fixed rank must not exceed min(in, out) of any decoder Linear."""
    if cfg.rank <= 0:
        return
    outs = out_features(hf_config)
    for name, width in in_features(hf_config).items():
        if cfg.rank > min(width, outs[name]):
            raise ConfigError(f"{cfg.method}: rank {cfg.rank} exceeds min(in, out) = {min(width, outs[name])} of {name}")


def replace_lowrank(model: nn.Module, cfg: Any, row_weights: Callable[[str, torch.Tensor], torch.Tensor | None],
                    desc: str, extra: dict[str, float] | None = None,
                    residual: Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None) -> nn.Module:
    """The low-rank family's apply: weight, allocate ranks, factorize, swap in LowRankLinears.

    ``row_weights(path, W)``: FWSVD's row scaling (None: plain SVD); ``residual(path, W, BA)``:
    LoSparse's sparse residual (a dense tensor whose nonzeros are kept) or None.
    """
    linears = [(p, lin) for p, lin in decoder_linears(model) if isinstance(lin, nn.Linear)]
    weights, svds, shapes = {}, {}, {}
    with torch.no_grad():
        for path, lin in progress(linears, desc=f"{desc}: svd"):
            weights[path] = row_weights(path, lin.weight.data)
            svds[path] = weighted_svd(lin.weight.data, weights[path])
            shapes[path] = (lin.in_features, lin.out_features)
        spectra = {p: svd[1] for p, svd in svds.items()}
        total = sum(i * o for i, o in shapes.values())
        ranks = {p: cfg.rank for p in shapes} if cfg.rank > 0 else \
            allocate_ranks(spectra, shapes, (1 - cfg.ratio) * total, extra)
        for path, lin in progress(linears, desc=f"{desc}: factorize"):
            r = ranks[path]
            if r is None:
                continue
            A, B = factorize(lin.weight.data, r, weights[path], svds.pop(path))
            S = residual(path, lin.weight.data.float(), B @ A) if residual is not None else None
            nnz = 0 if S is None else int((S != 0).sum())
            new = LowRankLinear(lin.in_features, lin.out_features, r, lin.bias is not None, nnz, lin.weight.dtype)
            set_module(model, path, new.set_factors(A, B, None if lin.bias is None else lin.bias.data, S))
    return model


@dataclass(frozen=True)
class SVDConfig(MethodConfig):
    """Truncated-SVD factorization of every decoder Linear.

    ratio: fraction of the decoder Linears' parameters removed, in [0, 1) (ranks allocated
    globally); rank: a fixed rank for every Linear instead (0 = use ratio).
    """

    method = "svd"
    ratio: float = 0.2
    rank: int = 0

    def __post_init__(self) -> None:
        check_lowrank_config(self)


@register(SVDConfig, family="lowrank", title="Truncated SVD low-rank factorization (baseline)", arxiv=None,
          needs_calibration=False, paper="svd-lowrank", check=check_lowrank_for_model)
def apply(model: nn.Module, config: SVDConfig, calib: Any = None) -> nn.Module:
    return replace_lowrank(model, config, lambda path, W: None, desc="svd")
