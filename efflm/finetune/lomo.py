"""LOMO: Full Parameter Fine-tuning for Large Language Models with Limited Resources.

arXiv 2306.09782 (Lv et al., 2023). Algorithm: plain SGD, fused into the backward pass — each
parameter is updated as soon as its gradient is computed and the gradient is freed at once,
so full fine-tuning needs no optimizer state and at most one parameter's gradient at a time.
Gradient-norm clipping takes a first backward pass that only measures the norm, then the
updating one (``efflm.finetune.fused_update``).
Differs from OpenLMLab/LOMO: no fp16 dynamic loss scaling (efflm trains in fp32 or bf16
autocast); the hooks are torch's post-accumulate-grad hooks rather than per-tensor grad hooks.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from efflm.finetune.fused_update import FusedUpdate


def sgd_rule(weight_decay: float = 0.0):
    """θ ← θ − lr·(g + wd·θ), in the parameter's own dtype."""

    def rule(p: torch.nn.Parameter, g: torch.Tensor, lr: float) -> None:
        if weight_decay:
            p.mul_(1 - lr * weight_decay)
        p.add_(g.to(p.dtype), alpha=-lr)

    return rule


def lomo(params: Iterable[torch.nn.Parameter], weight_decay: float = 0.0, max_grad_norm: float = 0.0) -> FusedUpdate:
    """LOMO's fused SGD over ``params``: call ``.step(loss, lr)`` in place of backward + step."""
    return FusedUpdate(params, sgd_rule(weight_decay), max_grad_norm)
