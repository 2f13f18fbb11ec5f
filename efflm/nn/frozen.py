"""Back-propagating through a frozen compressed Linear without keeping its float weight.

Autograd would save the dequantized weight of every such layer for the backward pass — a
float copy of the whole model for as long as a training step lasts, which is exactly what
storing the base compressed (QLoRA, LoRA on a GPTQ base) is meant to avoid. Here the forward
saves nothing but a reference to the module, and the backward dequantizes again to compute
``∂L/∂x = ∂L/∂y · W`` (bitsandbytes' 4-bit matmul does the same). The weight gets no gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class _FrozenProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, product: Callable, weight: Callable) -> torch.Tensor:
        ctx.weight = weight
        with torch.no_grad():
            return product(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad @ ctx.weight(grad.dtype), None, None


def frozen_product(x: torch.Tensor, product: Callable, weight: Callable[[torch.dtype], torch.Tensor]) -> torch.Tensor:
    """``product(x)`` (= x·Wᵀ, no bias); when ``x`` needs a gradient, ``weight(dtype)`` rebuilds W
    in the backward pass instead of autograd keeping it."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _FrozenProduct.apply(x, product, weight)
    return product(x)
