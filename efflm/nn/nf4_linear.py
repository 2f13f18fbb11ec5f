"""``NF4Linear``: QLoRA's 4-bit NormalFloat weights with double-quantized block scales.

Codes index the 16 NF4 levels (quantiles of N(0, 1) scaled to [−1, 1], an exact zero
included); each block of 64 weights along a row has an absmax scale. Double quantization
stores those scales as int8 around their mean, with one fp32 scale per 256 scales. Bits per
weight: 4 + 8/64 + 32/(64·256) ≈ 4.13 (the paper's 4.127). Two codes per byte.

Differs from bitsandbytes: the second-level quantization is a linear int8 grid, not
bitsandbytes' dynamic 8-bit map, and the forward dequantizes in torch before ``F.linear``
(bitsandbytes' CUDA kernel does the same two steps fused).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from efflm.nn.codes import pack_codes, unpack_codes
from efflm.nn.frozen import frozen_product
from efflm.nn.module_registry import register_module

NF4 = torch.tensor(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ]
)
BLOCK, SCALE_BLOCK = 64, 256


def nf4_quantize(w: torch.Tensor, block: int = BLOCK, scale_block: int = SCALE_BLOCK) -> dict[str, torch.Tensor]:
    """Codes [out, in] (uint8 in 0..15), int8 scale codes, their fp32 scales and mean."""
    out_f, in_f = w.shape
    wb = w.float().reshape(-1, block)
    absmax = wb.abs().amax(dim=1).clamp(min=1e-12)
    codes = (wb / absmax[:, None]).unsqueeze(-1).sub(NF4).abs().argmin(dim=-1).to(torch.uint8)
    mean = absmax.mean()
    centered = absmax - mean
    pad = (-centered.numel()) % scale_block
    cb = F.pad(centered, (0, pad)).reshape(-1, scale_block)
    s2 = (cb.abs().amax(dim=1) / 127).clamp(min=1e-12)
    q2 = torch.round(cb / s2[:, None]).clamp(-127, 127).to(torch.int8).flatten()[: centered.numel()].clone()
    return {"codes": codes.reshape(out_f, in_f), "scale_codes": q2, "scale_scales": s2, "scale_mean": mean.reshape(1)}


def nf4_absmax(scale_codes: torch.Tensor, scale_scales: torch.Tensor, mean: torch.Tensor, scale_block: int):
    s2 = scale_scales.repeat_interleave(scale_block)[: scale_codes.numel()]
    return scale_codes.float() * s2 + mean


@register_module(role="nf4")
class NF4Linear(nn.Module):
    """Frozen NF4 Linear (QLoRA's base): ``W[o, b] = absmax[o, b] · NF4[code]``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        block: int = BLOCK,
        scale_block: int = SCALE_BLOCK,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if in_features % block:
            raise ValueError(f"NF4Linear needs in_features divisible by {block}")
        self.in_features, self.out_features, self.block, self.scale_block = (
            in_features,
            out_features,
            block,
            scale_block,
        )
        n_blocks = out_features * in_features // block
        self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scale_codes", torch.zeros(n_blocks, dtype=torch.int8))
        self.register_buffer("scale_scales", torch.ones(-(-n_blocks // scale_block)))
        self.register_buffer("scale_mean", torch.zeros(1))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None
        self.compute_dtype = dtype

    @classmethod
    def from_linear(cls, linear: nn.Linear, block: int = BLOCK, scale_block: int = SCALE_BLOCK) -> "NF4Linear":
        m = cls(
            linear.in_features, linear.out_features, linear.bias is not None, block, scale_block, linear.weight.dtype
        )
        q = nf4_quantize(linear.weight.data, block, scale_block)
        m.qweight = pack_codes(q["codes"], 4)
        m.scale_codes, m.scale_scales, m.scale_mean = q["scale_codes"], q["scale_scales"], q["scale_mean"]
        if linear.bias is not None:
            m.bias.data.copy_(linear.bias.data)
        return m

    def spec(self) -> dict:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
            "block": self.block,
            "scale_block": self.scale_block,
            "dtype": str(self.compute_dtype).removeprefix("torch."),
        }

    @classmethod
    def from_spec(cls, spec: dict) -> "NF4Linear":
        return cls(**{**spec, "dtype": getattr(torch, spec["dtype"])})

    def set_compute_dtype(self, dtype: torch.dtype) -> None:
        self.compute_dtype = dtype
        if self.bias is not None:
            self.bias.data = self.bias.data.to(dtype)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        codes = unpack_codes(self.qweight, 4, self.in_features).long()
        absmax = nf4_absmax(self.scale_codes, self.scale_scales, self.scale_mean, self.scale_block)
        w = NF4.to(absmax.device)[codes].reshape(-1, self.block) * absmax[:, None]
        return w.reshape(self.out_features, self.in_features).to(dtype or self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = frozen_product(x, lambda x: F.linear(x, self.dequantize(x.dtype)), self.dequantize)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, nf4 block={self.block}, double-quant={self.scale_block}"
        )
