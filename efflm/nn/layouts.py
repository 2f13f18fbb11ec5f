"""Storage layouts of ``QuantLinear``'s integer codes: one class each, chosen once per module.

* ``BitPacked``: 2- and 3-bit codes packed with no padding bits (8 codes in ``bits`` bytes, the
  inputs padded to a multiple of 8) — the file layout for those widths, and the in-memory one
  unless a kernel's layout applies;
* ``Nibble``: two 4-bit codes per byte — the file layout for 4 bits;
* ``Q4Blocks``: the same bytes in pairs of 32-input blocks (``c_kernels.to_blocks``) for efflm's own
  AVX2 kernel (``c_kernels``), used in bf16 when the group size is a multiple of 32 and the
  kernel runs on this machine;
* ``Int4Pack``: the order of torch's int4 CPU kernel (bf16, group sizes 32..256), with the
  bf16 (scale, zero) pairs it reads as a derived, unsaved buffer;
* ``SignedInt8``: 5..8-bit symmetric codes as int8 (per-channel 8-bit ones run through
  efflm's q8 kernel or torch's int8 kernel in bf16);
* ``UInt8``: 5..8-bit asymmetric codes.

A layout packs codes (uint8 in [0, 2^bits − 1]) into ``qweight``, reads them back, and may
name a kernel for an input; ``QuantLinear`` dequantizes when none applies. Every kernel here
reads CPU memory (``c_kernels.takes``): on a GPU each layout unpacks its codes with torch ops
and the module dequantizes.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from efflm.nn import c_kernels, torch_kernels
from efflm.nn.codes import pack_bits, pack_codes, unpack_bits, unpack_codes


class Layout:
    name: ClassVar[str] = ""
    portable: ClassVar[bool] = True  # False: files hold the module's portable layout instead

    def pack(self, m: Any, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def unpack(self, m: Any, qweight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def attach(self, m: Any) -> None:
        """Rebuild derived buffers after the codes or scales changed."""

    def kernel(self, m: Any, x: torch.Tensor) -> str | None:
        return None

    def matmul(self, m: Any, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


class Nibble(Layout):
    name = "nibble"

    def pack(self, m, codes):
        return pack_codes(codes, m.bits)

    def unpack(self, m, qweight):
        return unpack_codes(qweight, m.bits, m.in_features)


class BitPacked(Layout):
    name = "bitpacked"

    def pack(self, m, codes):
        pad = -codes.shape[1] % 8
        return pack_bits(torch.nn.functional.pad(codes.to(torch.uint8), (0, pad)), m.bits)

    def unpack(self, m, qweight):
        return unpack_bits(qweight, m.bits, m.in_features + (-m.in_features % 8))[:, : m.in_features]


class Q4Blocks(Layout):
    name = "q4blk"
    portable = False

    def pack(self, m, codes):
        return c_kernels.to_blocks(codes + torch_kernels.code_shift(m.bits))

    def unpack(self, m, qweight):
        return c_kernels.from_blocks(qweight, m.in_features) - torch_kernels.code_shift(m.bits)

    def kernel(self, m, x):
        return "q4" if x.dtype == torch.bfloat16 and c_kernels.takes(x) else None

    def matmul(self, m, x):
        return c_kernels.q4_mm(x, m.qweight, m.scales, getattr(m, "offsets", None), 2 ** (m.bits - 1), m.group_size)


class Int4Pack(Layout):
    name = "int4pack"
    portable = False

    def pack(self, m, codes):  # torch's packing op runs on the CPU; the result goes where the codes were
        return torch_kernels.int4pack((codes + torch_kernels.code_shift(m.bits)).cpu()).to(codes.device)

    def unpack(self, m, qweight):
        codes = torch_kernels.int4pack_to_codes(qweight, m.out_features, m.in_features)
        return codes - torch_kernels.code_shift(m.bits)

    def attach(self, m):
        sz = torch_kernels.int4_scales_and_zeros(m.scales, getattr(m, "offsets", None), m.bits)
        m.register_buffer("sz", sz, persistent=False)

    def kernel(self, m, x):
        return "int4" if x.dtype == torch.bfloat16 and c_kernels.takes(x) else None

    def matmul(self, m, x):
        return torch_kernels.int4_mm(x, m.qweight, m.group_size, m.sz)


class SignedInt8(Layout):
    name = "i8"

    def pack(self, m, codes):
        return (codes.to(torch.int16) - 2 ** (m.bits - 1)).to(torch.int8)

    def unpack(self, m, qweight):
        return (qweight.to(torch.int16) + 2 ** (m.bits - 1)).to(torch.uint8)

    def kernel(self, m, x):
        # bf16 and per channel only (with fp32 activations it measured ~25x slower than dequantizing)
        if m.group_size != m.in_features or x.dtype != torch.bfloat16 or not c_kernels.takes(x):
            return None
        return "q8" if m.bits == 8 and m.in_features % 32 == 0 and c_kernels.available() else "int8"

    def matmul(self, m, x):
        if m.bits == 8 and m.in_features % 32 == 0 and c_kernels.available():
            return c_kernels.q8_mm(x, m.qweight, m.scales)
        return torch_kernels.int8_mm(x, m.qweight, m.scales[:, 0].to(x.dtype))


class UInt8(Layout):
    name = "u8"

    def pack(self, m, codes):
        return codes.to(torch.uint8).contiguous()

    def unpack(self, m, qweight):
        return qweight


def portable(bits: int, symmetric: bool) -> Layout:
    """The layout files hold for these codes."""
    if bits <= 4:
        return BitPacked() if bits < 4 else Nibble()
    return SignedInt8() if symmetric else UInt8()


def for_compute(bits: int, symmetric: bool, group_size: int, dtype: torch.dtype, in_features: int = 0) -> Layout:
    """The layout a module computing in ``dtype`` keeps in memory (a kernel's, where one applies)."""
    if bits <= 4 and dtype == torch.bfloat16:
        if group_size % 32 == 0 and in_features <= c_kernels.MAX_IN and c_kernels.available():
            return Q4Blocks()
        if group_size in torch_kernels.INT4_GROUPS:
            return Int4Pack()
    return portable(bits, symmetric)
