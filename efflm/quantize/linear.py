"""``QuantLinear``: the one replacement point for a quantized ``nn.Linear``.

It holds integer codes packed as tightly as a byte allows (two 2..4-bit codes per byte,
one 5..8-bit code per byte) plus fp16 per-group scales (and offsets for asymmetric
grids) — never a float copy of the weight. The harness counts these buffers as the
model's bytes. ``forward`` dequantizes and calls ``F.linear``; faster packed kernels plug
in here without changing any method.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


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


class QuantLinear(nn.Module):
    """Weight-only quantized Linear: ``W[o, g*G:(g+1)*G] = scale[o,g] * (q - z) (+ offset)``."""

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int,
                 symmetric: bool, bias: bool = False, dtype: torch.dtype = torch.float32):
        super().__init__()
        if in_features % 2:
            raise ValueError("QuantLinear needs an even in_features")
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.symmetric = bits, symmetric
        self.group_size = group_size if group_size > 0 else in_features
        groups = in_features // self.group_size
        cols = in_features if bits > 4 else in_features // 2
        self.register_buffer("qweight", torch.zeros(out_features, cols, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, groups, dtype=torch.float16))
        if not symmetric:
            self.register_buffer("offsets", torch.zeros(out_features, groups, dtype=torch.float16))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None
        self.compute_dtype = dtype

    def spec(self) -> dict:
        """Constructor arguments, saved with the model so a loader can rebuild the shell."""
        return {"in_features": self.in_features, "out_features": self.out_features, "bits": self.bits,
                "group_size": self.group_size, "symmetric": self.symmetric,
                "bias": self.bias is not None, "dtype": str(self.compute_dtype).removeprefix("torch.")}

    @classmethod
    def from_spec(cls, spec: dict) -> "QuantLinear":
        return cls(**{**spec, "dtype": getattr(torch, spec["dtype"])})

    def set_codes(self, q: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None) -> None:
        self.qweight.copy_(pack_codes(q, self.bits))
        self.scales.copy_(scales)
        if offsets is not None:
            self.offsets.copy_(offsets)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        from efflm.quantize.rtn import dequantize

        q = unpack_codes(self.qweight, self.bits, self.in_features)
        w = dequantize(q, self.scales, getattr(self, "offsets", None), self.bits, self.group_size)
        return w.to(dtype or self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, symmetric={self.symmetric}")
