"""llama.cpp's legacy block types, written from efflm's own codes and fp16 group parameters.

Groups of 32 on efflm's grids (``efflm.quantize.grid``) are these blocks exactly, no re-rounding:

  Q4_0  symmetric 4-bit    w = d·(q − 8)     [d fp16][16 bytes: q_j | q_(j+16) << 4]
  Q8_0  symmetric 8-bit    w = d·(q − 128)   [d fp16][32 int8: q − 128]
  Q4_1  asymmetric 4-bit   w = d·q + m       [d fp16][m fp16][16 bytes as Q4_0]
  Q5_0  symmetric 5-bit    w = d·(q − 16)    [d fp16][qh: bit j = q_j >> 4, uint32 LE][low nibbles as Q4_0]
  Q5_1  asymmetric 5-bit   w = d·q + m       [d fp16][m fp16][qh][low nibbles]
  MXFP4 E2M1 (FP4) codes   w = 2^e·fp4(q)    [e: E8M0 byte][16 bytes as Q4_0] (efflm's code is
        sign·8 + magnitude index, the same as ggml's; power-of-two scales only)

Each function takes uint8 codes ``[rows, in]`` and fp16 scales (and offsets) ``[rows, in/32]`` and
returns the bytes ``[rows, blocks · block size]`` that ``gguf.GGUFWriter`` stores for the type.
"""

from __future__ import annotations

import numpy as np
import torch


def _fp16(t: torch.Tensor, rows: int, blocks: int) -> np.ndarray:
    return t.to(torch.float16).numpy().view(np.uint8).reshape(rows, blocks, 2)


def _nibbles(codes: torch.Tensor) -> np.ndarray:
    """[rows, blocks, 16]: element j in the low nibble of byte j, element j + 16 in its high nibble."""
    rows, cols = codes.shape
    q = (codes.reshape(rows, cols // 32, 2, 16) & 0xF).to(torch.uint8)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).numpy()


def _high_bits(codes: torch.Tensor) -> np.ndarray:
    """[rows, blocks, 4]: the fifth bit of element j as bit j of a little-endian uint32."""
    rows, cols = codes.shape
    bits = ((codes.reshape(rows, cols // 32, 32).to(torch.int64) >> 4) & 1) << torch.arange(32)
    return bits.sum(-1).to(torch.int64).numpy().astype("<u4").view(np.uint8).reshape(rows, cols // 32, 4)


def q4_0(codes: torch.Tensor, scales: torch.Tensor, offsets: None = None) -> np.ndarray:
    rows, cols = codes.shape
    return np.concatenate([_fp16(scales, rows, cols // 32), _nibbles(codes)], axis=-1).reshape(rows, -1)


def q8_0(codes: torch.Tensor, scales: torch.Tensor, offsets: None = None) -> np.ndarray:
    rows, cols = codes.shape
    qs = (codes.to(torch.int16) - 128).to(torch.int8).numpy().view(np.uint8).reshape(rows, cols // 32, 32)
    return np.concatenate([_fp16(scales, rows, cols // 32), qs], axis=-1).reshape(rows, -1)


def q4_1(codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor) -> np.ndarray:
    rows, cols = codes.shape
    b = cols // 32
    return np.concatenate([_fp16(scales, rows, b), _fp16(offsets, rows, b), _nibbles(codes)], axis=-1).reshape(rows, -1)


def q5_0(codes: torch.Tensor, scales: torch.Tensor, offsets: None = None) -> np.ndarray:
    rows, cols = codes.shape
    parts = [_fp16(scales, rows, cols // 32), _high_bits(codes), _nibbles(codes)]
    return np.concatenate(parts, axis=-1).reshape(rows, -1)


def q5_1(codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor) -> np.ndarray:
    rows, cols = codes.shape
    b = cols // 32
    parts = [_fp16(scales, rows, b), _fp16(offsets, rows, b), _high_bits(codes), _nibbles(codes)]
    return np.concatenate(parts, axis=-1).reshape(rows, -1)


def mxfp4(codes: torch.Tensor, scales: torch.Tensor, offsets: None = None) -> np.ndarray:
    rows, cols = codes.shape
    e = (torch.log2(scales.float()).round() + 127).to(torch.uint8).numpy().reshape(rows, cols // 32, 1)
    return np.concatenate([e, _nibbles(codes)], axis=-1).reshape(rows, -1)


# (bits, symmetric) -> (GGML type name, writer); groups of 32 always
BLOCKS = {
    (4, True): ("Q4_0", q4_0),
    (8, True): ("Q8_0", q8_0),
    (4, False): ("Q4_1", q4_1),
    (5, True): ("Q5_0", q5_0),
    (5, False): ("Q5_1", q5_1),
}


def names() -> str:
    """The grids that have a block type, for messages."""
    return ", ".join(f"{n} ({b}-bit {'symmetric' if s else 'asymmetric'})" for (b, s), (n, _) in BLOCKS.items())
