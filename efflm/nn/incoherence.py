"""Random orthogonal transforms for incoherence processing (QuIP, arXiv 2307.13304): a
randomized Hadamard transform where the size allows, Kronecker-multiplied by a small random
orthogonal matrix for the rest.

A size n splits as n = h · m, h the largest power of two dividing n (576 = 64 · 9, 1536 = 512 · 3).
The transform is M = H_h/√h ⊗ Q_m applied after random signs: v ↦ M (s ⊙ v). Applied to the
last dimension of x viewed as [..., h, m]: Hₕ X Qᵀ. Where n has no factor of two (h = 1) it is
a plain random orthogonal matrix of size n — the stated fallback. H_h is rebuilt exactly
(Sylvester's construction), so a layer stores only its signs and its Q_m.
"""

from __future__ import annotations

from functools import lru_cache

import torch


def split(n: int) -> tuple[int, int]:
    """(h, m): h the largest power of two dividing n, m = n / h."""
    h = n & -n
    return h, n // h


@lru_cache(maxsize=16)
def hadamard(h: int) -> torch.Tensor:
    """The normalized h × h Sylvester Hadamard matrix (orthogonal, symmetric)."""
    H = torch.ones(1, 1)
    while H.shape[0] < h:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H / h**0.5


def random_orthogonal(m: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


def random_signs(n: int, gen: torch.Generator) -> torch.Tensor:
    return (torch.randint(0, 2, (n,), generator=gen) * 2 - 1).to(torch.int8)


def mix(x: torch.Tensor, q: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """M v for every vector v along the last dimension of x (Mᵀ v if ``transpose``); M = H_h ⊗ Q."""
    m = q.shape[0]
    h = x.shape[-1] // m
    X = x.reshape(*x.shape[:-1], h, m)
    Q = q.to(x.dtype)
    X = torch.matmul(hadamard(h).to(x.device, x.dtype), X) if h > 1 else X
    return torch.matmul(X, Q if transpose else Q.t()).reshape(x.shape)


def rotate_weight(w: torch.Tensor, s_out, q_out, s_in, q_in) -> torch.Tensor:
    """U W Vᵀ with U = M_out diag(s_out), V = M_in diag(s_in)."""
    w1 = w.float() * s_out.float()[:, None] * s_in.float()[None, :]
    w2 = mix(w1, q_in)  # W Vᵀ: every row v ↦ M_in v
    return mix(w2.t(), q_out).t()  # M_out (·): every column


def unrotate_weight(w: torch.Tensor, s_out, q_out, s_in, q_in) -> torch.Tensor:
    """Uᵀ Ŵ V: the weight a rotated Ŵ stands for."""
    w1 = mix(w.float().t(), q_out, transpose=True).t()
    return mix(w1, q_in, transpose=True) * s_out.float()[:, None] * s_in.float()[None, :]


def rotate_hessian(H: torch.Tensor, s_in, q_in) -> torch.Tensor:
    """V H Vᵀ: the Hessian of the rotated inputs x ↦ V x."""
    H1 = H.float() * s_in.float()[:, None] * s_in.float()[None, :]
    return mix(mix(H1, q_in).t(), q_in).t()
