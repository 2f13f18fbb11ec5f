"""``FPLinear``: weights in a small floating-point format (FP8 E4M3/E5M2, FP4 E2M1) with
per-group fp16 scales, and optionally activations rounded to FP8 per token at run time.

``W[o, g·G:(g+1)·G] = scale[o, g] · fp(code)``; FP8 codes are one byte each, FP4 codes two
per byte. Activations (``act_format``): per token s = max|x| / format max, x ← s · fp(x / s).
The forward dequantizes the weight and calls ``F.linear`` — these CPUs have no FP8 or FP4
matrix unit, so the formats' accuracy is real and their speed is not claimed.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from efflm.nn import fp_formats
from efflm.nn.codes import groups, pack_codes, unpack_codes
from efflm.nn.frozen import frozen_product
from efflm.nn.module_registry import register_module


def fp_quantize(w: torch.Tensor, fmt: str, group_size: int, pow2: bool = False, e4m3: bool = False):
    """(uint8 codes [out, in], fp16 scales [out, groups]) of ``w``; codes against the stored scales.
    ``pow2``: scales are powers of two (MX); ``e4m3``: E4M3 values under one power of two (NVFP4)."""
    wg = groups(w.float(), group_size)
    scales = fp_formats.scale_for(wg.abs().amax(dim=-1), fmt, pow2)
    scales = (fp_formats.e4m3_scales(scales) if e4m3 else scales).half()
    codes = fp_formats.encode(wg / scales.float().unsqueeze(-1), fmt)
    return codes.reshape(w.shape), scales


@register_module(role="fp_grid")
class FPLinear(nn.Module):
    """Weight-only (or W·A) small-float Linear; ``bits`` counts the code, not the scales."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        weight_format: str,
        group_size: int,
        act_format: str | None = None,
        bias: bool = False,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_format, self.act_format = weight_format, act_format
        self.bits = fp_formats.BITS[weight_format]
        self.group_size = group_size if group_size > 0 else in_features
        width = in_features // 2 if self.bits == 4 else in_features
        self.register_buffer("qweight", torch.zeros(out_features, width, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, in_features // self.group_size, dtype=torch.float16))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None
        self.compute_dtype = dtype

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        weight_format: str,
        group_size: int,
        act_format: str | None = None,
        pow2=False,
        e4m3_scales=False,
    ) -> "FPLinear":
        m = cls(
            linear.in_features,
            linear.out_features,
            weight_format,
            group_size,
            act_format,
            linear.bias is not None,
            linear.weight.dtype,
        )
        codes, scales = fp_quantize(linear.weight.data, weight_format, m.group_size, pow2, e4m3_scales)
        m.set_codes(codes, scales)
        if linear.bias is not None:
            m.bias.data.copy_(linear.bias.data)
        return m

    def spec(self) -> dict:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "weight_format": self.weight_format,
            "group_size": self.group_size,
            "act_format": self.act_format,
            "bias": self.bias is not None,
            "dtype": str(self.compute_dtype).removeprefix("torch."),
        }

    @classmethod
    def from_spec(cls, spec: dict) -> "FPLinear":
        return cls(**{**spec, "dtype": getattr(torch, spec["dtype"])})

    def set_codes(self, codes: torch.Tensor, scales: torch.Tensor) -> None:
        self.qweight = pack_codes(codes, 4) if self.bits == 4 else codes.to(torch.uint8).contiguous()
        self.scales.copy_(scales)

    def codes(self) -> torch.Tensor:
        return unpack_codes(self.qweight, 4, self.in_features) if self.bits == 4 else self.qweight

    def set_compute_dtype(self, dtype: torch.dtype) -> None:
        self.compute_dtype = dtype
        if self.bias is not None:
            self.bias.data = self.bias.data.to(dtype)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        w = groups(fp_formats.decode(self.codes(), self.weight_format), self.group_size)
        w = (w * self.scales.float().unsqueeze(-1)).reshape(self.out_features, self.in_features)
        return w.to(dtype or self.compute_dtype)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token rounding of activations onto ``act_format`` (identity without one)."""
        if self.act_format is None:
            return x
        s = fp_formats.scale_for(x.float().abs().amax(dim=-1, keepdim=True), self.act_format)
        return (fp_formats.round_to(x.float() / s, self.act_format) * s).to(x.dtype)

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantize_input(x), self.dequantize(x.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = frozen_product(x, self._product, self.dequantize)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        act = f"A:{self.act_format}" if self.act_format else "weight-only"
        return f"in={self.in_features}, out={self.out_features}, W:{self.weight_format} g{self.group_size}, {act}"
