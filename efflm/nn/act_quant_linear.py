"""``ActQuantLinear``: a ``QuantLinear`` (same codes, grid, layouts and kernels) whose inputs
are also quantized, per token at run time: symmetric int of ``act_bits`` with one scale per
token, s = max|x| / (2^(act_bits−1) − 1) — ZeroQuant's token-wise activation quantization.
A role of its own, so exporters that know only weight grids refuse it rather than drop the
activation quantization.
"""

from __future__ import annotations

import torch

from efflm.nn.module_registry import register_module
from efflm.nn.quant_linear import QuantLinear


def quantize_tokens(x: torch.Tensor, bits: int) -> torch.Tensor:
    """``x`` rounded per token (last dimension) onto a symmetric ``bits``-bit integer grid."""
    top = 2 ** (bits - 1) - 1
    s = (x.float().abs().amax(dim=-1, keepdim=True) / top).clamp(min=1e-12)
    return (torch.round(x.float() / s).clamp(-top, top) * s).to(x.dtype)


@register_module(role="weight_act_grid")
class ActQuantLinear(QuantLinear):
    def __init__(self, *args, act_bits: int = 8, **kwargs):
        super().__init__(*args, **kwargs)
        self.act_bits = act_bits

    def spec(self) -> dict:
        return super().spec() | {"act_bits": self.act_bits}

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        return super()._product(quantize_tokens(x, self.act_bits))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", act_bits={self.act_bits} per token"
