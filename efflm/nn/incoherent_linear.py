"""``IncoherentLinear``: a Linear stored as quantized codes of its incoherence-processed weight
Ŵ ≈ U W Vᵀ (QuIP), with the two random orthogonal transforms applied at run time:
y = (x Vᵀ) Ŵᵀ U, i.e. rotate the input, the quantized matmul (an inner ``QuantLinear``, with its
kernels), rotate the output back. U and V are ``efflm.nn.incoherence`` transforms: random signs
plus a small orthogonal factor per side (the Hadamard part is rebuilt, not stored).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from efflm.nn import incoherence
from efflm.nn.frozen import frozen_product
from efflm.nn.module_registry import register_module
from efflm.nn.quant_linear import QuantLinear


@register_module(role="incoherent")
class IncoherentLinear(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        group_size: int,
        symmetric: bool,
        bias: bool = False,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.q = QuantLinear(in_features, out_features, bits, group_size, symmetric, bias=False, dtype=dtype)
        (_, m_in), (_, m_out) = incoherence.split(in_features), incoherence.split(out_features)
        self.register_buffer("signs_in", torch.ones(in_features, dtype=torch.int8))
        self.register_buffer("signs_out", torch.ones(out_features, dtype=torch.int8))
        self.register_buffer("q_in", torch.eye(m_in))
        self.register_buffer("q_out", torch.eye(m_out))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None
        self.compute_dtype = dtype

    def spec(self) -> dict:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bits": self.q.bits,
            "group_size": self.q.group_size,
            "symmetric": self.q.symmetric,
            "bias": self.bias is not None,
            "dtype": str(self.compute_dtype).removeprefix("torch."),
        }

    @classmethod
    def from_spec(cls, spec: dict) -> "IncoherentLinear":
        return cls(**{**spec, "dtype": getattr(torch, spec["dtype"])})

    def transforms(self) -> tuple[torch.Tensor, ...]:
        return self.signs_out, self.q_out, self.signs_in, self.q_in

    def set_compute_dtype(self, dtype: torch.dtype) -> None:
        self.compute_dtype = dtype
        self.q.set_compute_dtype(dtype)
        if self.bias is not None:
            self.bias.data = self.bias.data.to(dtype)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        w = incoherence.unrotate_weight(self.q.dequantize(torch.float32), *self.transforms())
        return w.to(dtype or self.compute_dtype)

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        xt = incoherence.mix(x * self.signs_in.to(x.dtype), self.q_in)
        z = self.q(xt)
        return incoherence.mix(z, self.q_out, transpose=True) * self.signs_out.to(z.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = frozen_product(x, self._product, self.dequantize)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, incoherence-processed (QuIP)"
