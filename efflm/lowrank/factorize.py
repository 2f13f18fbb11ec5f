"""The low-rank family's shared machinery: weighted SVD, global rank allocation, and the
replacement of Linears by ``LowRankLinear`` factors.

Used by SVD (the baseline), FWSVD (arXiv 2207.00112: row weights from Fisher information)
and LoSparse (arXiv 2306.11222: plus a sparse residual). Each paper's file computes its own
weights or residual and calls these plain functions.

Rank allocation: singular components of all Linears are taken greedily by the share of
their matrix's energy (σ²/‖W‖²_F) per parameter they cost (in + out), until the kept
parameters reach (1 − ratio) of the decoder Linears'; a Linear whose rank reaches
in·out/(in + out) stays dense. (Equal relative error for every matrix, the alternative, loses
far more: docs/methods.md, "Defaults chosen by measurement".)
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn

from efflm.core.errors import ConfigError
from efflm.core.progress import progress
from efflm.models.arch import decoder_linears, in_features, out_features, set_module
from efflm.nn.lowrank_linear import LowRankLinear


def weighted_svd(W: torch.Tensor, row_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Thin SVD (U, S, Vh) of diag(r)·W (r = row_weight, default 1)."""
    W = W.float()
    return torch.linalg.svd(W if row_weight is None else row_weight.float().unsqueeze(1) * W, full_matrices=False)


def factorize(
    W: torch.Tensor, rank: int, row_weight: torch.Tensor | None = None, svd: tuple[torch.Tensor, ...] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A [rank, in], B [out, rank]) minimizing ‖diag(r)(W − BA)‖_F (r = row_weight, default 1);
    ``svd``: a precomputed ``weighted_svd(W, row_weight)``."""
    r = torch.ones(W.shape[0]) if row_weight is None else row_weight.float()
    U, S, Vh = svd if svd is not None else weighted_svd(W, row_weight)
    root = S[:rank].sqrt()
    return root.unsqueeze(1) * Vh[:rank], (U[:, :rank] * root) / r.unsqueeze(1)


def breakeven_rank(n_in: int, n_out: int) -> int:
    """The rank at which two factors hold as many parameters as the dense matrix."""
    return n_in * n_out // (n_in + n_out)


def allocate_ranks(
    spectra: dict[str, torch.Tensor],
    shapes: dict[str, tuple[int, int]],
    keep_params: float,
    extra: dict[str, float] | None = None,
) -> dict[str, int | None]:
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
        heap += [
            (-float(e) / (shapes[p][0] + shapes[p][1]), p, i)
            for i, e in enumerate(energy[1 : breakeven_rank(*shapes[p])].tolist(), 1)
        ]
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
        raise ConfigError(
            f"{cfg.method}: ratio (fraction of decoder Linear parameters removed) must be in [0, 1), got {cfg.ratio}"
        )
    if cfg.rank < 0:
        raise ConfigError(f"{cfg.method}: rank must be positive, or 0 to choose ranks from ratio, got {cfg.rank}")


def check_lowrank_for_model(hf_config: Any, cfg: Any) -> None:
    """A fixed rank must not exceed min(in, out) of any decoder Linear."""
    if cfg.rank <= 0:
        return
    outs = out_features(hf_config)
    for name, width in in_features(hf_config).items():
        if cfg.rank > min(width, outs[name]):
            raise ConfigError(
                f"{cfg.method}: rank {cfg.rank} exceeds min(in, out) = {min(width, outs[name])} of {name}"
            )


def factorizations(
    model: nn.Module,
    cfg: Any,
    desc: str,
    row_weights: dict[str, torch.Tensor] | None = None,
    extra: dict[str, float] | None = None,
) -> Iterator[tuple[str, nn.Linear, torch.Tensor, torch.Tensor]]:
    """For every decoder Linear the budget factorizes: ``(path, linear, A, B)`` minimising
    ‖diag(r)(W − BA)‖_F (``row_weights[path]`` = r; default 1).

    Ranks: ``cfg.rank`` for every Linear if > 0, else allocated globally to keep (1 − cfg.ratio)
    of the decoder Linears' parameters, ``extra[path]`` counting what a factorized layer holds
    besides its factors. Linears left dense are not yielded.
    """
    row_weights = row_weights or {}
    linears = [(p, lin) for p, lin in decoder_linears(model) if isinstance(lin, nn.Linear)]
    svds, shapes = {}, {}
    with torch.no_grad():
        for path, lin in progress(linears, desc=f"{desc}: svd"):
            svds[path] = weighted_svd(lin.weight.data, row_weights.get(path))
            shapes[path] = (lin.in_features, lin.out_features)
        total = sum(i * o for i, o in shapes.values())
        ranks = (
            {p: cfg.rank for p in shapes}
            if cfg.rank > 0
            else allocate_ranks({p: svd[1] for p, svd in svds.items()}, shapes, (1 - cfg.ratio) * total, extra)
        )
        for path, lin in progress(linears, desc=f"{desc}: factorize"):
            svd = svds.pop(path)
            if ranks[path] is not None:
                yield (path, lin, *factorize(lin.weight.data, ranks[path], row_weights.get(path), svd))


def install(
    model: nn.Module, path: str, linear: nn.Linear, A: torch.Tensor, B: torch.Tensor, sparse: torch.Tensor | None = None
) -> None:
    """Replace ``linear`` by a ``LowRankLinear`` holding B·A (+ the nonzeros of ``sparse``, as CSR)."""
    nnz = 0 if sparse is None else int((sparse != 0).sum())
    new = LowRankLinear(
        linear.in_features, linear.out_features, A.shape[0], linear.bias is not None, nnz, linear.weight.dtype
    )
    set_module(model, path, new.set_factors(A, B, None if linear.bias is None else linear.bias.data, sparse))
