"""Distilling the Knowledge in a Neural Network (Hinton, Vinyals, Dean), arXiv 1503.02531.

Algorithm: the student is trained to match the teacher's softened next-token distribution —
KL(softmax(z_t/τ) ‖ softmax(z_s/τ))·τ² on every token of the (fixed) training data — optionally
mixed with the ordinary cross-entropy on the data's labels. Reverse KL and GKD's generalized
JSD are selectable divergences; a hidden-state MSE can be added for pruned students.
Differs from the paper (and trl/DistillKit's token-level KD): applied per token to a causal LM;
the student's logits are made a chunk of tokens at a time; the student trains a LoRA adapter
(any base, packed 4-bit included) or every weight with a pruned model's zeros kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from efflm.core.registry import register
from efflm.distill.objective import DistillConfig, DistillHooks, check, prepare_student


@dataclass(frozen=True)
class KDConfig(DistillConfig):
    """Token-level knowledge distillation on the training data (off-policy)."""

    method = "kd"


@register(
    KDConfig,
    family="distill",
    title="Distilling the Knowledge in a Neural Network",
    arxiv="1503.02531",
    needs_calibration=False,
    paper="hinton-kd",
    check=check,
    hooks=DistillHooks,
)
def apply(model: torch.nn.Module, config: KDConfig, calib: Any = None) -> torch.nn.Module:
    return prepare_student(model, config)
