"""Integer weight codes on a per-group grid: how they are packed into bytes and read back.

The grid (shared by RTN, GPTQ, AWQ and the packed modules):
  symmetric:  w = s·(q − 2^(b−1))          (llama.cpp's Q4_0/Q8_0 grid)
  asymmetric: w = s·q + o                   (Q4_1's grid, a float offset per group)
with fp16 scales ``s`` and offsets ``o`` of shape [out, in / group_size]. Choosing the grid
is the quantizers' business (``efflm.quantize.grid``); this module only decodes it.
"""

from __future__ import annotations

import torch


def groups(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """[out, in] -> [out, in / g, g] (``group_size`` ≤ 0: one group per row)."""
    g = group_size if group_size > 0 else w.shape[1]
    return w.reshape(w.shape[0], w.shape[1] // g, g)


def dequantize(
    q: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None, bits: int, group_size: int
) -> torch.Tensor:
    """float32 weights from uint8 codes [out, in] in [0, 2^bits − 1] and their grid."""
    qg = groups(q.float(), group_size)
    s = scales.float().unsqueeze(-1)
    if offsets is None:
        w = (qg - 2 ** (bits - 1)) * s
    else:
        w = qg * s + offsets.float().unsqueeze(-1)
    return w.reshape(q.shape)


def pack_codes(q: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [out, in] -> packed uint8; two codes per byte when bits <= 4."""
    q = q.to(torch.uint8)
    if bits > 4:
        return q.contiguous()
    return (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()


def unpack_codes(packed: torch.Tensor, bits: int, in_features: int) -> torch.Tensor:
    if bits > 4:
        return packed
    out = torch.empty(packed.shape[0], in_features, dtype=torch.uint8, device=packed.device)
    out[:, 0::2] = packed & 0x0F
    out[:, 1::2] = packed >> 4
    return out


def pack_bits(q: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [rows, in] of ``bits`` each (in divisible by 8) -> [rows, in·bits/8] bytes:
    every 8 codes fill ``bits`` bytes, code j at bit offset bits·j (little-endian), no padding."""
    rows, cols = q.shape
    word = torch.zeros(rows, cols // 8, dtype=torch.int64, device=q.device)
    for j, part in enumerate(q.to(torch.int64).reshape(rows, cols // 8, 8).unbind(-1)):
        word |= part << (bits * j)
    return torch.stack([(word >> (8 * i)) & 0xFF for i in range(bits)], dim=-1).to(torch.uint8).reshape(rows, -1)


def unpack_bits(packed: torch.Tensor, bits: int, in_features: int) -> torch.Tensor:
    """Inverse of ``pack_bits``: uint8 codes [rows, in_features] (one broadcast shift, in the
    narrowest integer type that holds 8 codes: it runs once per forward of a packed Linear)."""
    rows = packed.shape[0]
    if 8 % bits == 0:  # whole codes per byte (1, 2, 4, 8 bits): no word to assemble
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
        return ((packed[..., None] >> shifts) & ((1 << bits) - 1)).reshape(rows, in_features)
    dtype = torch.int32 if bits < 4 else torch.int64
    b = packed.reshape(rows, in_features // 8, bits).to(dtype)
    word = b[..., 0]
    for i in range(1, bits):
        word = word | (b[..., i] << (8 * i))
    shifts = torch.arange(0, 8 * bits, bits, dtype=dtype, device=packed.device)
    return ((word[..., None] >> shifts) & ((1 << bits) - 1)).to(torch.uint8).reshape(rows, in_features)


def to_csr(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The nonzeros of ``dense`` [rows, cols], rounded to fp16 first (an entry that rounds to 0 is
    dropped), as CSR: int32 row pointers [rows + 1], int16 columns, fp16 values."""
    vals = dense.half()
    rows, cols = (vals != 0).nonzero().unbind(1)  # row-major order
    counts = torch.bincount(rows, minlength=dense.shape[0])
    pointers = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)]).to(torch.int32)
    return pointers, cols.to(torch.int16), vals[rows, cols]


def add_csr(w: torch.Tensor, pointers: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
    """``w`` [rows, cols] with the CSR entries added in place (and returned)."""
    counts = pointers.diff().long().to(w.device)
    rows = torch.repeat_interleave(torch.arange(w.shape[0], device=w.device), counts, output_size=cols.numel())
    w[rows, cols.long()] += vals.float()
    return w
