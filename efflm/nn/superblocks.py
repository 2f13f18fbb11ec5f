"""Super-block scale lattices: per-group grids whose scales (and offsets) are small-integer
multiples of one fp16 per 256 weights — llama.cpp's K-quants, and integer zero points.

A K-quant groups a row's weights in super-blocks of 256; inside one, every group (32 or 16
weights) has scale ``d·sc`` and, for the asymmetric types, offset ``−dmin·m``, with fp16 ``d``,
``dmin`` and integer ``sc``, ``m`` of a few bits:

  Q4_K  4-bit codes, groups of 32, asymmetric,  sc, m in 0..63
  Q5_K  5-bit codes, groups of 32, asymmetric,  sc, m in 0..63
  Q6_K  6-bit codes, groups of 16, symmetric,   sc in −127..127 (int8)
  Q3_K  3-bit codes, groups of 16, symmetric,   sc in −31..31 (6 bits, stored + 32)
  Q2_K  2-bit codes, groups of 16, asymmetric,  sc, m in 0..15

efflm keeps such a grid in an ordinary ``QuantLinear`` (fp16 scales and offsets per group):
``lattice`` rounds ``d`` to few enough significant bits that every ``d·sc`` is itself an fp16,
so the fp16 scales hold the lattice exactly and ``factor`` recovers ``d`` and ``sc`` from them.
``int_zero_point`` is the one-group analogue for compressed-tensors: an asymmetric grid whose
offset is ``−s·z`` for an integer ``z``, chosen so that product is an fp16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SUPER = 256  # weights per K-quant super-block


@dataclass(frozen=True)
class KQuant:
    name: str
    bits: int
    group_size: int
    symmetric: bool
    levels: int  # largest |sc| (and m)

    @property
    def mantissa(self) -> int:
        """Significant bits of d such that d·sc fits fp16's 11."""
        return 11 - self.levels.bit_length()


KQUANTS = {
    k.name: k
    for k in (
        KQuant("Q4_K", 4, 32, False, 63),
        KQuant("Q5_K", 5, 32, False, 63),
        KQuant("Q6_K", 6, 16, True, 127),
        KQuant("Q3_K", 3, 16, True, 31),
        KQuant("Q2_K", 2, 16, False, 15),
    )
}
KINDS = ("free", "int_zero_point", *KQUANTS)  # the scale structures a weight grid may have
_MIN_NORMAL = 2.0**-14


def round_up(x: torch.Tensor, mantissa: int) -> torch.Tensor:
    """Smallest value ≥ x (x ≥ 0) with ``mantissa`` significant bits and at least fp16's smallest
    normal, as float32."""
    x = x.float().clamp(min=_MIN_NORMAL)
    e = torch.floor(torch.log2(x))
    step = torch.exp2(e - (mantissa - 1))
    return torch.ceil(x / step) * step


def _multiples(real: torch.Tensor, kq: KQuant, signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(d [..., 1], integer multipliers) for group values ``real`` [..., groups per super-block]."""
    d = round_up(real.abs().amax(-1, keepdim=True) / kq.levels, kq.mantissa)
    k = torch.round(real / d)
    if signed:  # never 0: a zero scale has no codes
        k = torch.where(k == 0, torch.where(real < 0, -1.0, 1.0), k).clamp(-kq.levels, kq.levels)
    else:
        k = k.clamp(0, kq.levels)
    return d, k


def lattice(wg: torch.Tensor, kq: KQuant) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fp16 scales (and offsets) [out, groups] on ``kq``'s lattice for weights grouped as
    [out, groups, group_size] (groups a multiple of the super-block's)."""
    out, n, _ = wg.shape
    per = SUPER // kq.group_size
    if kq.symmetric:  # efflm's signed scale: the entry of largest |w| sits on code 0
        m = wg.gather(-1, wg.abs().argmax(-1, keepdim=True)).squeeze(-1)
        real = (m / -(2 ** (kq.bits - 1))).reshape(out, n // per, per)
        d, sc = _multiples(real, kq, signed=True)
        return (d * sc).reshape(out, n).half(), None
    lo = wg.amin(-1).clamp(max=0)  # llama.cpp keeps the offset ≤ 0 (m ≥ 0)
    real = ((wg.amax(-1) - lo) / (2**kq.bits - 1)).reshape(out, n // per, per)
    d, sc = _multiples(real, kq, signed=False)
    sc = sc.clamp(min=1)
    dmin, mq = _multiples((-lo).reshape(out, n // per, per), kq, signed=False)
    return (d * sc).reshape(out, n).half(), (-dmin * mq).reshape(out, n).half()


def int_zero_point(wg: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp16 (scales, offsets) [out, groups]: the min/max grid over a range holding 0 (as
    llm-compressor's), its offset ``−s·z`` for an integer z in [0, 2^b − 1], ``s`` rounded so the
    product is an fp16."""
    lo, hi = wg.amin(-1).clamp(max=0), wg.amax(-1).clamp(min=0)
    s = round_up((hi - lo) / (2**bits - 1), 11 - bits)
    z = torch.round(-lo / s).clamp(0, 2**bits - 1)
    return s.half(), (-s * z).half()


def zero_points(scales: torch.Tensor, offsets: torch.Tensor, bits: int) -> torch.Tensor | None:
    """Integer zero points z (int64) with offsets == −scales·z exactly, or None where any is not."""
    s, o = scales.float(), offsets.float()
    z = torch.round(-o / s)
    ok = ((-s * z).half().float() == o).all() and (z >= 0).all() and (z <= 2**bits - 1).all()
    return z.long() if ok else None


def factor(values: torch.Tensor, kq: KQuant, signed: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
    """fp16 d [rows, super-blocks] and integer multipliers [rows, super-blocks, per] with
    ``d·k == values`` exactly (``values`` fp16 [rows, groups]), or None if some super-block has
    no such d on ``kq``'s lattice."""
    per = SUPER // kq.group_size
    v = values.float().reshape(values.shape[0], -1, per)
    top = v.abs().amax(-1, keepdim=True)
    d = torch.zeros_like(top)
    found = top == 0  # all zero: d = 0 holds them
    for k in range(kq.levels, 0, -1):  # d = top / k for the largest k that works: the finest d
        cand = (top / k).half().float()
        q = (v / cand).round()
        fits = (cand > 0) & (cand * q == v).all(-1, keepdim=True) & (q.abs() <= kq.levels).all(-1, keepdim=True)
        if not signed:
            fits &= (q >= 0).all(-1, keepdim=True)
        new = fits & ~found
        d = torch.where(new, cand, d)
        found |= fits
    if not found.all():
        return None
    k = torch.where(d > 0, v / torch.where(d > 0, d, 1.0), 0.0).round()
    return d.squeeze(-1).half(), k.to(torch.int64)
