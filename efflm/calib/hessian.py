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
        self.n_in = n_in
        self._H: torch.Tensor | None = None  # made at the first input: a layer's unsolved observers hold nothing
        self.taken = False
        self.absmean = torch.zeros(n_in)
        self.absmax = torch.zeros(n_in)
        self.stats = stats
        self.n = 0

    @property
    def H(self) -> torch.Tensor | None:
        if self._H is None and not self.taken:
            self._H = torch.zeros(self.n_in, self.n_in, device=self.absmean.device)
        return self._H

    @H.setter
    def H(self, value: torch.Tensor | None) -> None:
        self._H = value

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        if self.n == 0 and self.absmean.device != x.device:  # the statistics live where the activations do
            self.absmean, self.absmax = self.absmean.to(x.device), self.absmax.to(x.device)
            self._H = None if self._H is None else self._H.to(x.device)
        m = x.shape[0]
        if self.stats:
            a = x.abs()
            self.absmax = torch.maximum(self.absmax, a.amax(dim=0))
            self.absmean += (a.sum(dim=0) - m * self.absmean) / (self.n + m)
        self.H *= self.n / (self.n + m)
        self.n += m
        x = x * (2 / self.n) ** 0.5
        add_gram(self.H, x)

    def take(self) -> torch.Tensor:
        """Hand H over to a solver that may overwrite and free it (``consume=True`` below); the
        observer keeps no reference, so the n × n matrix lives only as long as the solver needs it."""
        if self.taken:
            raise RuntimeError("Hessian.take: H was already taken")
        H, self._H, self.taken = self.H, None, True
        return H


def add_gram(H: torch.Tensor, x: torch.Tensor, band: int = 256) -> torch.Tensor:
    """``H += xᵀx`` in place for x [tokens, n], computing only the bands on and above the diagonal
    (about (1 + 1/bands)/2 of the multiply-adds) and adding each band's product to its upper and
    mirrored lower place: the values of ``H + gram(x)`` with no second n × n matrix (one band's
    product, band × n, is the only temporary)."""
    n = x.shape[1]
    if n <= band:
        H += x.t() @ x
        return H
    for a in range(0, n, band):
        b = min(a + band, n)
        P = x[:, a:b].t() @ x[:, a:]  # rows a..b of xᵀx, from the diagonal on
        block = P[:, : b - a]
        H[a:b, a:b] += torch.triu(block) + torch.triu(block, 1).t()  # the diagonal block, mirrored
        H[a:b, b:] += P[:, b - a :]
        H[b:, a:b] += P[:, b - a :].t()
    return H


def gram(x: torch.Tensor, band: int = 256) -> torch.Tensor:
    """xᵀx for x [tokens, n] from its bands on and above the diagonal (``add_gram``); on BLAS the
    result equals ``x.t() @ x`` entry for entry, and it is symmetric exactly."""
    n = x.shape[1]
    return add_gram(torch.zeros(n, n, device=x.device), x, band)


def mask_dead_columns(W: torch.Tensor, H: torch.Tensor, consume: bool = False) -> torch.Tensor:
    """Zero the weight columns of inputs that never fired (in place) and return H with 1 on their
    diagonal, so H stays invertible and their weights stay zero: a copy, or H itself (changed in
    place) when ``consume`` or when no input is dead (callers never modify H then)."""
    dead = torch.diag(H) == 0
    if not bool(dead.any()):
        return H
    if not consume:
        H = H.clone()
    H[dead, dead] = 1
    W[:, dead] = 0
    return H


def inverse_cholesky(
    H: torch.Tensor, damp: float, retries: int = 3, consume: bool = False
) -> tuple[torch.Tensor | None, float]:
    """Upper Cholesky factor of (H + λI)⁻¹, λ = damp · mean(diag H), raising λ ×10 on failure.

    ``consume``: H is the caller's to give away — the dampening is added to it in place and its
    storage is released once it is factored (H is then empty), so at most two n × n matrices are
    alive at a time instead of four; the factor is the same, bit for bit."""
    diag = torch.diag(H)  # a copy: the undampened diagonal, restored before each retry
    mean_diag = diag.mean()
    for attempt in range(retries + 1):
        lam = damp * 10**attempt
        if consume:
            Hd = H
            Hd.diagonal().copy_(diag).add_(lam * mean_diag)
        else:
            Hd = H.clone()  # H + λI, with each n × n intermediate freed as soon as it is used
            Hd.diagonal().add_(lam * mean_diag)
        L, info = torch.linalg.cholesky_ex(Hd)
        del Hd
        if info == 0:
            if consume:
                H.untyped_storage().resize_(0)  # the caller's H is spent: free it before the inverse
            inverse = torch.cholesky_inverse(L)
            del L
            U, info = torch.linalg.cholesky_ex(inverse, upper=True)
            del inverse
            if info == 0 and torch.isfinite(U).all():
                return U, lam
    return None, float("nan")
