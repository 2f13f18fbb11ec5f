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
from dataclasses import dataclass
from typing import Any

import torch

from efflm.core.registry import register
from efflm.finetune.full_params import FullConfig, FullHooks, one_process, unfreeze
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


@dataclass(frozen=True)
class LomoConfig(FullConfig):
    """Every weight trained by SGD inside the backward pass (train.lr, weight_decay; clipping by
    train.max_grad_norm takes the paper's extra backward pass, 0 turns it off)."""

    method = "lomo"


class LomoHooks(FullHooks):
    def check_train(self, cfg: Any, world: int) -> None:
        one_process("lomo", cfg, world, accumulate=False)

    def updater(self, model: torch.nn.Module, cfg: Any) -> FusedUpdate:
        return lomo(model.parameters(), cfg.weight_decay, cfg.max_grad_norm)


@register(
    LomoConfig,
    family="finetune",
    title="Full Parameter Fine-tuning for Large Language Models with Limited Resources",
    arxiv="2306.09782",
    needs_calibration=False,
    paper="full-parameter-fine-tuning-large-language",
    hooks=LomoHooks,
)
def apply(model: torch.nn.Module, config: LomoConfig, calib: Any = None) -> torch.nn.Module:
    return unfreeze(model, config)
