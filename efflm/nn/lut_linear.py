"""``LUTLinear``: non-uniform weight codes looked up in a per-row table, plus a sparse set of
full-precision corrections — the dense-and-sparse storage of SqueezeLLM.

``W[o, i] = lut[o, code[o, i]] (+ sparse[o, i])``. Codes of ``bits`` bits are packed tightly
(8 codes in ``bits`` bytes, ``codes.pack_bits``); each row has its own 2^bits fp16 centroids;
the sparse part (if any) is CSR — int32 row pointers, int16 column indices, fp16 values — holding, for
each kept weight, its value minus the table's, so those weights are reproduced to fp16.
Every buffer is counted in the bits per weight (``bits_per_weight``). Decoding (a few rows of
input) runs on efflm's lookup-table kernel (``lut_cpu.c``: the table lives in AVX2 registers,
codes are unpacked 8 at a time, the sparse part is added per row); longer inputs dequantize
once and call ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from efflm.nn import c_kernels
from efflm.nn.codes import add_csr, pack_bits, to_csr, unpack_bits
from efflm.nn.frozen import frozen_product
from efflm.nn.module_registry import register_module

KERNEL_MAX_ROWS = 16  # beyond this, dequantizing once and one GEMM is faster


@register_module(role="lut")
class LUTLinear(nn.Module):
    """Lookup-table quantized Linear with optional sparse fp16 outliers."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        nnz: int = 0,
        bias: bool = False,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if in_features % 8 or in_features > 32767:
            raise ValueError("LUTLinear needs in_features divisible by 8 and below 32768")
        self.in_features, self.out_features, self.bits, self.nnz = in_features, out_features, bits, nnz
        self.register_buffer("qweight", torch.zeros(out_features, in_features * bits // 8, dtype=torch.uint8))
        self.register_buffer("lut", torch.zeros(out_features, 2**bits, dtype=torch.float16))
        self.register_buffer("sp_rows", torch.zeros(out_features + 1 if nnz else 0, dtype=torch.int32))
        self.register_buffer("sp_cols", torch.zeros(nnz, dtype=torch.int16))
        self.register_buffer("sp_vals", torch.zeros(nnz, dtype=torch.float16))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None
        self.compute_dtype = dtype

    @classmethod
    def from_parts(
        cls,
        codes: torch.Tensor,
        lut: torch.Tensor,
        sparse: torch.Tensor | None,
        bits: int,
        bias: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> "LUTLinear":
        """From uint8 codes [out, in], a table [out, 2^bits] and a dense tensor of sparse
        corrections (zero where none; None for no sparse part)."""
        out_f, in_f = codes.shape
        csr = None if sparse is None else to_csr(sparse)
        m = cls(in_f, out_f, bits, 0 if csr is None else csr[2].numel(), bias is not None, dtype)
        m.qweight.copy_(pack_bits(codes, bits))
        m.lut.copy_(lut.half())
        if m.nnz:
            m.sp_rows.copy_(csr[0]), m.sp_cols.copy_(csr[1]), m.sp_vals.copy_(csr[2])
        if bias is not None:
            m.bias.data.copy_(bias)
        return m

    def spec(self) -> dict:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bits": self.bits,
            "nnz": self.nnz,
            "bias": self.bias is not None,
            "dtype": str(self.compute_dtype).removeprefix("torch."),
        }

    @classmethod
    def from_spec(cls, spec: dict) -> "LUTLinear":
        return cls(**{**spec, "dtype": getattr(torch, spec["dtype"])})

    def set_compute_dtype(self, dtype: torch.dtype) -> None:
        self.compute_dtype = dtype
        if self.bias is not None:
            self.bias.data = self.bias.data.to(dtype)

    def codes(self) -> torch.Tensor:
        return unpack_bits(self.qweight, self.bits, self.in_features)

    def sparse_dense(self) -> torch.Tensor:
        """The sparse corrections as a dense float32 [out, in] tensor."""
        dense = torch.zeros(self.out_features, self.in_features, device=self.sp_vals.device)
        return add_csr(dense, self.sp_rows, self.sp_cols, self.sp_vals)

    def bits_per_weight(self) -> float:
        stored = sum(b.numel() * b.element_size() for b in self.buffers())
        return 8 * stored / (self.in_features * self.out_features)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        w = self.lut.float().gather(1, self.codes().long())
        if self.nnz:
            w = w + self.sparse_dense()
        return w.to(dtype or self.compute_dtype)

    def kernel(self, x: torch.Tensor) -> str | None:
        """ "lut" when efflm's lookup-table kernel takes this input (codes of ≤ 4 bits, at most
        ``KERNEL_MAX_ROWS`` rows: decoding; in CPU memory), else None: dequantize and ``F.linear``."""
        rows = x.numel() // self.in_features
        small = self.bits <= 4 and rows <= KERNEL_MAX_ROWS
        return "lut" if small and c_kernels.takes(x) and c_kernels.available() else None

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel(x) == "lut":
            return c_kernels.lut_mm(x, self)
        return F.linear(x, self.dequantize(x.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = frozen_product(x, self._product, self.dequantize)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bits={self.bits} (table per row), sparse={self.nnz}"
