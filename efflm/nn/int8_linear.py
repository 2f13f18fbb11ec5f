"""``Int8Linear``: int8 weights (per output channel) times int8 activations (per token, dynamic).

The module of W8A8 and SmoothQuant (``efflm.quantize.w8a8``, ``efflm.quantize.smoothquant``):
per output channel s_w = max|W_row| / 127, q_w = round(W / s_w); at run time per token
s_x = max|x| / 127, q_x = round(x / s_x); y = (q_x · q_wᵀ) · s_x · s_w with the int8 × int8
product accumulated exactly in 32-bit integers.
Kernel: ``torch._int_mm`` is exact but measured 3–13× slower than an fp32 GEMM on these CPUs,
so the product runs as fp32 GEMMs over slices of ≤ 1024 inputs — every partial sum is an
integer below 2^24, hence exact in fp32 — summed in int32: bit-identical to ``_int_mm``
(tested), at fp32-GEMM speed. Weights are stored as int8 + fp32 scales only.
LLM.int8()'s mixed-precision decomposition (``outlier_threshold`` > 0, ``efflm.quantize.llm_int8``):
the input columns where any token has |x| above the threshold leave the int8 product and are
multiplied in floating point by those columns of the (dequantized) int8 weight, as
bitsandbytes' ``Linear8bitLt`` does; the per-token scales come from the remaining columns.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from efflm.nn.module_registry import register_module

EXACT_K = 1024  # 1024 · 127 · 127 < 2^24: an fp32 dot product of int8 values this long is exact


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row: (codes int8 in [-127, 127], fp32 scales [rows])."""
    s = (w.float().abs().amax(dim=-1) / 127).clamp(min=1e-12)
    return torch.round(w.float() / s[:, None]).clamp(-127, 127).to(torch.int8), s


def int8_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact int32 product of int8 a [M, K] and int8 b [N, K]ᵀ (same result as ``torch._int_mm``)."""
    k = a.shape[1]
    if k <= EXACT_K:
        return (a.float() @ b.float().t()).to(torch.int32)
    out = None
    for j in range(0, k, EXACT_K):
        part = (a[:, j : j + EXACT_K].float() @ b[:, j : j + EXACT_K].float().t()).to(torch.int32)
        out = part if out is None else out + part
    return out


@register_module(role="w8a8")
class Int8Linear(nn.Module):
    """``y = int8(x) · int8(W)ᵀ`` rescaled; activations quantized per token at run time."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, outlier_threshold: float = 0.0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.outlier_threshold = float(outlier_threshold)
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("wscale", torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, weight: torch.Tensor | None = None, outlier_threshold: float = 0.0
    ) -> "Int8Linear":
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, outlier_threshold)
        m.qweight, m.wscale = quantize_rows(linear.weight.data if weight is None else weight)
        if linear.bias is not None:
            m.bias.data.copy_(linear.bias.data.float())
        return m

    def spec(self) -> dict:
        spec = {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None}
        return spec | ({"outlier_threshold": self.outlier_threshold} if self.outlier_threshold else {})

    @classmethod
    def from_spec(cls, spec: dict) -> "Int8Linear":
        return cls(**spec)

    def set_compute_dtype(self, dtype: torch.dtype) -> None:
        """Integer compute whatever the model's float type; outputs take the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float()
        outliers = None
        if self.outlier_threshold > 0:
            cols = (x2.abs() > self.outlier_threshold).any(dim=0).nonzero().squeeze(1)
            if cols.numel():  # LLM.int8(): these columns in floating point, the rest in int8
                w_out = self.qweight[:, cols].float() * self.wscale[:, None]
                outliers = x2[:, cols] @ w_out.t()
                x2 = x2.index_fill(1, cols, 0.0)
        sx = (x2.abs().amax(dim=-1) / 127).clamp(min=1e-12)
        qx = torch.round(x2 / sx[:, None]).clamp(-127, 127).to(torch.int8)
        y = int8_mm(qx, self.qweight).float() * sx[:, None] * self.wscale[None, :]
        if outliers is not None:
            y = y + outliers
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        mixed = f", fp outlier columns above {self.outlier_threshold:g}" if self.outlier_threshold else ""
        return f"in={self.in_features}, out={self.out_features}, W8A8 per-channel/per-token{mixed}"
