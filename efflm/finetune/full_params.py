"""What the full-parameter fine-tuning methods share (AdamW, LOMO, AdaLomo, MeZO): their config
fields, making every weight trainable, keeping a pruned model's zeros at zero, and the hooks
that save the whole model rather than an adapter.

``keep_sparsity``: a weight matrix that is at least ``SPARSE`` zeros (a pruned one: SparseGPT,
Wanda, 2:4) keeps its mask — its gradient is multiplied by the mask before any update sees it
(and MeZO's perturbation likewise), so a zero never moves and the sparse pattern, 2:4
included, survives training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from efflm.core.errors import ConfigError
from efflm.core.fields import opt
from efflm.core.registry import MethodConfig
from efflm.finetune.hooks import TrainHooks
from efflm.models.arch import layout_for

SPARSE = 0.25  # a 2-D weight with at least this share of exact zeros is treated as pruned


@dataclass(frozen=True)
class FullConfig(MethodConfig):
    """Every weight trained (the full-parameter methods' shared fields)."""

    keep_sparsity: bool = opt(
        True,
        "a weight matrix at least 25% exact zeros (a pruned one) keeps them: its gradient (MeZO: its "
        "perturbation) is masked, so an N:M pattern survives training",
    )
    train_embeddings: bool = opt(True, "also train the input embedding (and a head tied to it)")


def unfreeze(model: nn.Module, config: FullConfig) -> nn.Module:
    """Make every floating-point parameter trainable (but the embedding, if asked), masking the
    gradients of pruned matrices."""
    embed = None
    if not config.train_embeddings:
        from efflm.models.arch import get_module

        embed = get_module(model, layout_for(model.config.model_type).embed).weight
    for _, p in model.named_parameters():
        if not p.is_floating_point() or p is embed:
            continue
        p.requires_grad_(True)
        if config.keep_sparsity and p.dim() == 2 and (p == 0).float().mean() >= SPARSE:
            p._efflm_keep = (p != 0).to(p.dtype)
            p.register_hook(lambda g, p=p: g * keep_mask(p))
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"{config.method}: the model has no floating-point weights to train")
    return model


def keep_mask(p: nn.Parameter) -> torch.Tensor | None:
    """A pruned weight's mask (None for others), on the weight's device: it follows the model
    when the run moves it to a GPU after ``unfreeze``."""
    keep = getattr(p, "_efflm_keep", None)
    if keep is not None and keep.device != p.device:
        keep = p._efflm_keep = keep.to(p.device)
    return keep


class FullHooks(TrainHooks):
    """AdamW over every weight (the default updater); the run saves the whole model."""

    output = "model"


def one_process(method: str, cfg: Any, world: int, accumulate: bool = True) -> None:
    """The in-backward and zeroth-order updaters run in one process; the fused ones on one
    micro-batch per step (a gradient is applied the moment it exists, so none accumulates)."""
    if world > 1:
        raise ConfigError(f"{method}: runs in one process (its updates are not synchronized across processes)")
    if not accumulate and cfg.grad_accum != 1:
        raise ConfigError(f"{method}: train.grad_accum must be 1 (each gradient is applied inside the backward pass)")
