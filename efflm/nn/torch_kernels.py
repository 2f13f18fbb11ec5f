"""torch's packed CPU matmul kernels, and the layout conversions they need.

* int4: ``_convert_weight_to_int4pack_for_cpu`` packs 4-bit codes (two per byte, in a tiled
  order of its own) for ``_weight_int4pack_mm_for_cpu``, which computes with bf16
  activations and per-group (scale, zero) pairs: w = (q − 8)·scale + zero. Group sizes
  32/64/128/256 only.
* int8: ``_weight_int8pack_mm`` multiplies by int8 weights with one scale per output row.

The int4 layout is machine-specific, so files always hold efflm's own nibble layout;
``int4pack_to_codes`` inverts the packing exactly (the permutation is found once per shape
by packing the digits of each position's index).
"""

from __future__ import annotations

from functools import lru_cache

import torch

INT4_GROUPS = (32, 64, 128, 256)


def int4pack(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes in [0, 15], shape [N, K] -> the kernel's packed uint8 tensor [N, K/2]."""
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 2)


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    flat = packed.reshape(-1)
    return torch.stack([flat & 0x0F, flat >> 4], dim=1).reshape(-1)


@lru_cache(maxsize=64)
def _source_index(n: int, k: int) -> torch.Tensor:
    """For every nibble of the packed tensor, the flat index of the code it holds."""
    index = torch.arange(n * k, dtype=torch.int64).reshape(n, k)
    src = torch.zeros(n * k, dtype=torch.int64)
    digits = max(1, ((n * k - 1).bit_length() + 3) // 4)
    for d in range(digits):
        src |= _nibbles(int4pack(((index >> (4 * d)) & 15).to(torch.uint8))).to(torch.int64) << (4 * d)
    return src


def int4pack_to_codes(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    codes = torch.empty(n * k, dtype=torch.uint8, device=packed.device)
    codes[_source_index(n, k).to(packed.device)] = _nibbles(packed)
    return codes.reshape(n, k)


def code_shift(bits: int) -> int:
    """Codes of 2..4 bits are stored centred on 8 (q + shift), so the kernel's (q − 8) is small."""
    return 8 - 2 ** (bits - 1)


def int4_scales_and_zeros(scales: torch.Tensor, offsets: torch.Tensor | None, bits: int) -> torch.Tensor:
    """[G, N, 2] (scale, zero) in bf16 so that (q + shift − 8)·scale + zero equals efflm's grid.

    Symmetric grids need no zero at all; asymmetric ones get the range midpoint, so bf16
    rounding of scale and zero never cancels catastrophically.
    """
    s = scales.float()
    zero = torch.zeros_like(s) if offsets is None else offsets.float() + 2 ** (bits - 1) * s
    return torch.stack([s.t(), zero.t()], dim=-1).to(torch.bfloat16).contiguous()


def int4_mm(x: torch.Tensor, packed: torch.Tensor, group_size: int, sz: torch.Tensor) -> torch.Tensor:
    shape = x.shape
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, shape[-1]).contiguous(), packed, group_size, sz)
    return y.reshape(*shape[:-1], y.shape[-1])


def int8_mm(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    shape = x.shape
    y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, shape[-1]).contiguous(), weight, scales)
    return y.reshape(*shape[:-1], y.shape[-1])
