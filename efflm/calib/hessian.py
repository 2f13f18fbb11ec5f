"""The calibration Hessian H = 2XXᵀ of a Linear's inputs and what GPTQ-style solvers do with it.

One place for GPTQ (arXiv 2210.17323) and SparseGPT (arXiv 2301.00774), which share it:
the running accumulation over calibration tokens, dead input columns (never active, so
H[i, i] = 0), and the upper Cholesky factor of the dampened inverse, with damping raised
when the factorization fails. AWQ and SmoothQuant read the same observer's per-channel
activation statistics.
"""

from __future__ import annotations

import torch


class Hessian:
    """Running ``H = 2/n · Σ x xᵀ`` over every calibration token entering a Linear, plus the
    per-channel mean and max of ``|x|`` (AWQ's and SmoothQuant's activation statistics; left
    at zero with ``stats=False``)."""

    def __init__(self, n_in: int, stats: bool = True):
        self.H = torch.zeros(n_in, n_in)
        self.absmean = torch.zeros(n_in)
        self.absmax = torch.zeros(n_in)
        self.stats = stats
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        if self.n == 0 and self.H.device != x.device:  # the statistics live where the activations do
            self.H, self.absmean, self.absmax = (t.to(x.device) for t in (self.H, self.absmean, self.absmax))
        m = x.shape[0]
        if self.stats:
            a = x.abs()
            self.absmax = torch.maximum(self.absmax, a.amax(dim=0))
            self.absmean += (a.sum(dim=0) - m * self.absmean) / (self.n + m)
        self.H *= self.n / (self.n + m)
        self.n += m
        x = x * (2 / self.n) ** 0.5
        self.H += gram(x)


def gram(x: torch.Tensor, band: int = 256) -> torch.Tensor:
    """xᵀx for x [tokens, n], computing only the bands on and above the diagonal (about
    (1 + 1/bands)/2 of the multiply-adds) and mirroring the rest; on BLAS the result equals
    ``x.t() @ x`` entry for entry."""
    n = x.shape[1]
    if n <= band:
        return x.t() @ x
    G = torch.zeros(n, n, device=x.device)
    for a in range(0, n, band):
        G[a : a + band, a:] = x[:, a : a + band].t() @ x[:, a:]
    G.triu_()  # in place: two n × n buffers at a time, not four (the same values)
    G += torch.triu(G, 1).t()
    return G


def mask_dead_columns(W: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Zero the weight columns of inputs that never fired (in place) and return a copy of H
    with 1 on their diagonal, so H stays invertible and their weights stay zero — or H itself
    when no input is dead (no n × n copy; callers never modify it)."""
    dead = torch.diag(H) == 0
    if not bool(dead.any()):
        return H
    H = H.clone()
    H[dead, dead] = 1
    W[:, dead] = 0
    return H


def inverse_cholesky(H: torch.Tensor, damp: float, retries: int = 3) -> tuple[torch.Tensor | None, float]:
    """Upper Cholesky factor of (H + λI)⁻¹, λ = damp · mean(diag H), raising λ ×10 on failure."""
    mean_diag = torch.diag(H).mean()
    for attempt in range(retries + 1):
        lam = damp * 10**attempt
        Hd = H.clone()  # H + λI, with each n × n intermediate freed as soon as it is used
        Hd.diagonal().add_(lam * mean_diag)
        L, info = torch.linalg.cholesky_ex(Hd)
        del Hd
        if info == 0:
            inverse = torch.cholesky_inverse(L)
            del L
            U, info = torch.linalg.cholesky_ex(inverse, upper=True)
            del inverse
            if info == 0 and torch.isfinite(U).all():
                return U, lam
    return None, float("nan")
