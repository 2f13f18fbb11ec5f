"""Full-parameter fine-tuning with AdamW: the baseline the memory-efficient methods are measured
against (every weight trained, AdamW's two moments per weight, one backward per micro-batch).

Algorithm: unfreeze every weight (a pruned matrix keeps its zeros, ``full_params``), then the
shared training loop's AdamW with warm-up and schedule; the run saves the whole model.
Differs from a plain ``transformers.Trainer`` run: the loss is the chunked cross-entropy (no
``[tokens, vocab]`` logits held) and pruned masks are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from efflm.core.registry import register
from efflm.finetune.full_params import FullConfig, FullHooks, unfreeze


@dataclass(frozen=True)
class FullFinetuneConfig(FullConfig):
    """Every weight trained by AdamW (the run's train.lr, weight_decay, schedule)."""

    method = "full"


@register(
    FullFinetuneConfig,
    family="finetune",
    title="Full-parameter fine-tuning (AdamW)",
    arxiv=None,
    needs_calibration=False,
    paper="full-fine-tuning",
    hooks=FullHooks,
)
def apply(model: torch.nn.Module, config: FullFinetuneConfig, calib: Any = None) -> torch.nn.Module:
    return unfreeze(model, config)
