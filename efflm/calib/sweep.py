"""The column sweep shared by GPTQ (arXiv 2210.17323) and SparseGPT (arXiv 2301.00774).

Inside one lazy-update block of width n, columns are visited left to right; each is rounded
onto a per-row grid (GPTQ) or has its masked weights zeroed (SparseGPT), and its error e =
(w − ŵ) / U[i, i] is spread over the columns to its right: W[:, i:] −= e ⊗ U[i, i:]. The
columns after the block get all of the block's errors at once, as one matmul, by the caller.

Every row's sweep depends only on that row and U, so ``efflm/nn/csrc/sweep_cpu.c`` runs rows in
parallel with the whole column loop in C; ``sweep_torch`` is the readable reference (one
vectorized torch step per column) and the fallback where the C library cannot be built. Both
give the same codes and weights (tests/calib/test_sweep.py).
"""

from __future__ import annotations

import ctypes

import torch

from efflm.core import settings
from efflm.nn import c_kernels


def _ptr(t: torch.Tensor | None) -> ctypes.c_void_p | None:
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def sweep_torch(
    W: torch.Tensor,
    U: torch.Tensor,
    a: int,
    b: int,
    err: torch.Tensor,
    *,
    bits: int = 0,
    scales: torch.Tensor | None = None,
    offsets: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    codes: torch.Tensor | None = None,
) -> None:
    """Columns [a, b) of block ``W`` [rows, n] (updated in place); ``err[:, i]`` gets each error.

    bits > 0: quantize onto ``scales``/``offsets`` [rows, n] (per column; offsets None =
    symmetric), writing ``codes``; ``mask`` marks exact zeros kept at zero. bits == 0: prune
    the weights where ``mask`` is True."""
    half, top = (2 ** (bits - 1), 2**bits - 1) if bits else (0, 0)
    for i in range(a, b):
        w = W[:, i]
        if bits:
            if offsets is None:
                q = torch.clamp(torch.round(w / scales[:, i]) + half, 0, top)
                dq = (q - half) * scales[:, i]
            else:
                q = torch.clamp(torch.round((w - offsets[:, i]) / scales[:, i]), 0, top)
                dq = q * scales[:, i] + offsets[:, i]
            if mask is not None:
                q, dq = q.masked_fill(mask[:, i], half), dq.masked_fill(mask[:, i], 0)
            codes[:, i] = q
        else:
            dq = w.masked_fill(mask[:, i], 0)
        e = (w - dq) / U[i, i]
        W[:, i:].addr_(e, U[i, i:], alpha=-1)
        if not bits:
            W[:, i].masked_fill_(mask[:, i], 0)  # exactly zero, not zero up to rounding
        err[:, i] = e


def _c_ok(*tensors: torch.Tensor | None) -> bool:
    return all(t is None or (t.is_contiguous() and t.device.type == "cpu") for t in tensors)


def sweep(W: torch.Tensor, U: torch.Tensor, a: int, b: int, err: torch.Tensor, **kw) -> None:
    """``sweep_torch``'s contract and keywords, in C where the kernel library is available
    (float32 contiguous tensors; ``EFFLM_SWEEP_KERNEL=0`` keeps the torch loop)."""
    bits, mask = kw.get("bits", 0), kw.get("mask")
    scales, offsets, codes = kw.get("scales"), kw.get("offsets"), kw.get("codes")
    if not bits and mask is None:
        raise ValueError("sweep: pruning needs a mask")
    lib = c_kernels.library() if settings.sweep_kernel() else None
    tensors = (W, U, err, scales, offsets, codes)
    if lib is None or not _c_ok(*tensors, mask) or any(t is not None and t.dtype != torch.float32 for t in tensors):
        sweep_torch(W, U, a, b, err, **kw)
        return
    m = None if mask is None else mask.to(torch.uint8).contiguous()
    rows, n = W.shape
    lib.efflm_obs_sweep(
        _ptr(W), rows, n, a, b, _ptr(U), _ptr(scales), _ptr(offsets), _ptr(m), bits, _ptr(codes), _ptr(err)
    )
