"""Training through quantization: Linears that compute with their weights (and optionally
their inputs) rounded onto efflm's grids, gradients passing straight through the rounding
(the straight-through estimator). Shared by LLM-QAT (arXiv 2305.17888) and ZeroQuant's
layer-by-layer distillation (arXiv 2206.01861); after training, ``grid.to_quant_linear``
packs the weights onto the same grid.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from efflm.nn.act_quant_linear import quantize_tokens
from efflm.quantize.grid import fake_quantize


class FakeQuantLinear(nn.Linear):
    """A Linear computing with its weight rounded onto the grid (and, with ``act_bits``, its
    input rounded per token); gradients pass straight through both roundings."""

    def __init__(self, linear: nn.Linear, bits: int, group_size: int, symmetric: bool, act_bits: int = 0):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        self.weight = linear.weight
        self.bias = linear.bias
        self.bits, self.group_size, self.symmetric, self.act_bits = bits, group_size, symmetric, act_bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        q = fake_quantize(w.detach(), self.bits, self.group_size, self.symmetric)
        if self.act_bits:
            x = x + (quantize_tokens(x.detach(), self.act_bits) - x).detach()
        return F.linear(x, w + (q - w).detach(), self.bias)
