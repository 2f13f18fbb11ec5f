"""``SpQRLinear``: SpQR's sparse-quantized representation of a Linear.

Columns are stored in the order they were quantized (``perm``, GPTQ's act-order). Each row's
weights in every group of ``group_size`` consecutive (permuted) columns share an asymmetric
grid W = s·(q − z); the per-group scales s and zeros z are themselves quantized, to
``stat_bits`` codes with an fp16 (scale, offset) per ``stat_group`` rows. Outliers are a CSR
matrix of fp16 corrections (the weight minus its grid value, so W = grid + sparse there).
Every buffer counts in ``bits_per_weight``. Forward: dequantize and ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from efflm.nn.codes import add_csr, pack_bits, to_csr, unpack_bits
from efflm.nn.frozen import frozen_product
from efflm.nn.module_registry import register_module


def stat_values(codes: torch.Tensor, stats: torch.Tensor, stat_group: int) -> torch.Tensor:
    """Second-level dequantization: codes [G, out] with (scale, offset) per block of rows -> [G, out]."""
    s = stats[..., 0].float().repeat_interleave(stat_group, dim=1)
    o = stats[..., 1].float().repeat_interleave(stat_group, dim=1)
    return codes.float() * s + o


@register_module(role="spqr")
class SpQRLinear(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        group_size: int,
        stat_bits: int,
        stat_group: int,
        nnz: int = 0,
        bias: bool = False,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if in_features % 8 or out_features % 8 or in_features % group_size or out_features % stat_group:
            raise ValueError("SpQRLinear: sizes must be multiples of 8, of group_size (in) and stat_group (out)")
        self.in_features, self.out_features, self.bits, self.nnz = in_features, out_features, bits, nnz
        self.group_size, self.stat_bits, self.stat_group = group_size, stat_bits, stat_group
        groups, blocks = in_features // group_size, out_features // stat_group
        self.register_buffer("qweight", torch.zeros(out_features, in_features * bits // 8, dtype=torch.uint8))
        self.register_buffer("perm", torch.arange(in_features, dtype=torch.int16))
        for name in ("scale", "zero"):
            self.register_buffer(f"{name}_codes", torch.zeros(groups, out_features * stat_bits // 8, dtype=torch.uint8))
            self.register_buffer(f"{name}_stats", torch.zeros(groups, blocks, 2, dtype=torch.float16))
        self.register_buffer("sp_rows", torch.zeros(out_features + 1 if nnz else 0, dtype=torch.int32))
        self.register_buffer("sp_cols", torch.zeros(nnz, dtype=torch.int16))
        self.register_buffer("sp_vals", torch.zeros(nnz, dtype=torch.float16))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None
        self.compute_dtype = dtype

    def spec(self) -> dict:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bits": self.bits,
            "group_size": self.group_size,
            "stat_bits": self.stat_bits,
            "stat_group": self.stat_group,
            "nnz": self.nnz,
            "bias": self.bias is not None,
            "dtype": str(self.compute_dtype).removeprefix("torch."),
        }

    @classmethod
    def from_spec(cls, spec: dict) -> "SpQRLinear":
        return cls(**{**spec, "dtype": getattr(torch, spec["dtype"])})

    def set_parts(self, codes, perm, scale_codes, scale_stats, zero_codes, zero_stats, sparse) -> None:
        """Codes [out, in] (permuted order), perm [in], stat codes [groups, out] with their
        stats [groups, blocks, 2], and the sparse corrections as a dense [out, in] (permuted)."""
        self.qweight.copy_(pack_bits(codes, self.bits))
        self.perm.copy_(perm.to(torch.int16))
        self.scale_codes.copy_(pack_bits(scale_codes, self.stat_bits))
        self.zero_codes.copy_(pack_bits(zero_codes, self.stat_bits))
        self.scale_stats.copy_(scale_stats.half())
        self.zero_stats.copy_(zero_stats.half())
        if self.nnz:
            pointers, cols, vals = to_csr(sparse)
            self.sp_rows.copy_(pointers), self.sp_cols.copy_(cols), self.sp_vals.copy_(vals)

    def grid(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-group scales and zeros [out, groups], as the codes decode them."""
        s = stat_values(
            unpack_bits(self.scale_codes, self.stat_bits, self.out_features), self.scale_stats, self.stat_group
        )
        z = stat_values(
            unpack_bits(self.zero_codes, self.stat_bits, self.out_features), self.zero_stats, self.stat_group
        )
        return s.t(), z.t()

    def set_compute_dtype(self, dtype: torch.dtype) -> None:
        self.compute_dtype = dtype
        if self.bias is not None:
            self.bias.data = self.bias.data.to(dtype)

    def bits_per_weight(self) -> float:
        return 8 * sum(b.numel() * b.element_size() for b in self.buffers()) / (self.in_features * self.out_features)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        s, z = self.grid()
        q = unpack_bits(self.qweight, self.bits, self.in_features).float()
        g = self.group_size
        w = ((q.reshape(self.out_features, -1, g) - z[..., None]) * s[..., None]).reshape(q.shape)
        if self.nnz:
            add_csr(w, self.sp_rows, self.sp_cols, self.sp_vals)
        w = w[:, torch.argsort(self.perm.long())]  # back to the input order
        return w.to(dtype or self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = frozen_product(x, lambda x: F.linear(x, self.dequantize(x.dtype)), self.dequantize)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, bits={self.bits} g{self.group_size}, "
            f"stats {self.stat_bits}-bit per {self.stat_group} rows, outliers={self.nnz}"
        )
