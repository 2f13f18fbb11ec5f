"""llama.cpp's K-quant blocks (256 weights each), written from efflm's codes on a K-quant lattice.

A weight grid made with ``scales: Q4_K`` (etc., ``efflm.nn.superblocks``) keeps fp16 group scales
that are ``d·sc`` exactly; ``factor`` recovers ``d`` and ``sc`` (and ``dmin``, ``m``) and these
functions lay them out as ggml does (``ggml-common.h``'s ``block_q*_K``; byte for byte what the
``gguf`` package's dequantizers read):

  Q2_K  [sc | m << 4: 16][qs: 64, 2 bits][d][dmin]
  Q3_K  [hmask: 32][qs: 64, 2 bits][scales: 12, 6-bit sc + 32][d]
  Q4_K  [d][dmin][scales: 12, 6-bit sc and m][qs: 128, 4 bits]
  Q5_K  [d][dmin][scales: 12][qh: 32, fifth bits][qs: 128, low nibbles]
  Q6_K  [ql: 128, low nibbles][qh: 64, 2 high bits][sc: 16 int8][d]

Each function takes uint8 codes ``[rows, in]`` (efflm's: ``q`` for the asymmetric grids, value
+ 2^(b−1) for the symmetric ones — exactly the stored quants) and the factored parameters, and
returns ``[rows, in / 256 · block bytes]`` uint8.
"""

from __future__ import annotations

import numpy as np
import torch

from efflm.nn.superblocks import KQUANTS, SUPER, factor


def _u8(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.uint8)


def _fp16(d: torch.Tensor) -> torch.Tensor:
    return d.to(torch.float16).contiguous().view(torch.uint8).reshape(*d.shape, 2)


def _crumbs(c: torch.Tensor, parts: int) -> torch.Tensor:
    """[n, parts·k·32] 2-bit codes → [n, parts·32] bytes: value h·128 + k·32 + i at bits 2k of byte h·32 + i."""
    n = c.shape[0]
    c = c.reshape(n, parts, 4, 32).to(torch.int32) << (2 * torch.arange(4, dtype=torch.int32)).reshape(1, 1, 4, 1)
    return _u8(c.sum(2).reshape(n, parts * 32))


def _bits(c: torch.Tensor, planes: int) -> torch.Tensor:
    """[n, planes·32] single bits → [n, 32] bytes: value k·32 + i at bit k of byte i."""
    n = c.shape[0]
    c = c.reshape(n, planes, 32).to(torch.int32) << torch.arange(planes, dtype=torch.int32).reshape(1, planes, 1)
    return _u8(c.sum(1))


def _scales12(sc: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Q4_K/Q5_K's 12 bytes holding eight 6-bit scales and eight 6-bit mins."""
    lo_d = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    lo_m = m[:, :4] | ((m[:, 4:] >> 4) << 6)
    md = (sc[:, 4:] & 15) | ((m[:, 4:] & 15) << 4)
    return _u8(torch.cat([lo_d, lo_m, md], 1))


def _split(codes: torch.Tensor, scales, offsets, kq):
    """Flatten to one row per super-block: codes [n, 256], d [n], sc [n, per], dmin, m."""
    rows, cols = codes.shape
    fs = factor(scales, kq, signed=kq.symmetric)
    fo = None if offsets is None else factor(-offsets.float(), kq, signed=False)
    if fs is None or (offsets is not None and fo is None):
        raise ValueError(f"scales are not on {kq.name}'s lattice")
    n = rows * cols // SUPER
    c = codes.reshape(n, SUPER).to(torch.int32)
    d, sc = fs[0].reshape(n), fs[1].reshape(n, -1)
    if fo is None:
        return c, d, sc, None, None
    return c, d, sc, fo[0].reshape(n), fo[1].reshape(n, -1)


def q2_k(c, d, sc, dmin, m) -> torch.Tensor:
    return torch.cat([_u8(sc | (m << 4)), _crumbs(c, 2), _fp16(d), _fp16(dmin)], 1)


def q3_k(c, d, sc, dmin=None, m=None) -> torch.Tensor:
    s = sc + 32
    low = (s[:, :8] & 15) | ((s[:, 8:] & 15) << 4)
    high = (((s >> 4) & 3).reshape(-1, 4, 4) << (2 * torch.arange(4)).reshape(1, 4, 1)).sum(1)
    return torch.cat([_bits(c >> 2, 8), _crumbs(c & 3, 2), _u8(low), _u8(high), _fp16(d)], 1)


def q4_k(c, d, sc, dmin, m) -> torch.Tensor:
    n = c.shape[0]
    nib = c.reshape(n, 4, 2, 32)
    qs = _u8(nib[:, :, 0] | (nib[:, :, 1] << 4)).reshape(n, 128)
    return torch.cat([_fp16(d), _fp16(dmin), _scales12(sc, m), qs], 1)


def q5_k(c, d, sc, dmin, m) -> torch.Tensor:
    n = c.shape[0]
    nib = (c & 15).reshape(n, 4, 2, 32)
    qs = _u8(nib[:, :, 0] | (nib[:, :, 1] << 4)).reshape(n, 128)
    return torch.cat([_fp16(d), _fp16(dmin), _scales12(sc, m), _bits(c >> 4, 8), qs], 1)


def q6_k(c, d, sc, dmin=None, m=None) -> torch.Tensor:
    n = c.shape[0]
    nib = (c & 15).reshape(n, 2, 2, 64)
    ql = _u8(nib[:, :, 0] | (nib[:, :, 1] << 4)).reshape(n, 128)
    scales = sc.to(torch.int8).view(torch.uint8)
    return torch.cat([ql, _crumbs(c >> 4, 2), scales, _fp16(d)], 1)


WRITERS = {"Q2_K": q2_k, "Q3_K": q3_k, "Q4_K": q4_k, "Q5_K": q5_k, "Q6_K": q6_k}


def kquant_for(bits: int, group_size: int, symmetric: bool, in_features: int, scales, offsets):
    """The K-quant whose lattice holds this grid exactly, or None."""
    for kq in KQUANTS.values():
        if (kq.bits, kq.group_size, kq.symmetric) != (bits, group_size, symmetric) or in_features % SUPER:
            continue
        if factor(scales, kq, signed=kq.symmetric) is None:
            continue
        if offsets is None or factor(-offsets.float(), kq, signed=False) is not None:
            return kq
    return None


def pack(name: str, codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None) -> np.ndarray:
    """GGUF bytes [rows, in / 256 · block bytes] of K-quant ``name``."""
    kq = KQUANTS[name]
    rows = codes.shape[0]
    return WRITERS[name](*_split(codes, scales, offsets, kq)).reshape(rows, -1).numpy()
