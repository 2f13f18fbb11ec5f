"""LoRA-FA: Memory-efficient Low-rank Adaptation (Zhang et al.), arXiv 2308.03303.

Algorithm: LoRA with the down-projection A frozen at its random initialisation and only B
trained. A's gradient needs the layer input x; B's needs only A·x (r numbers per token), so
the full-width activations need not be kept for the adapter and optimizer state halves.
Differs from the paper's code: none in the math; peft has no LoRA-FA type, so the adapter is
saved as peft's LoRA at the same rank (A stored as initialised), noted in efflm_adapter.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from efflm.core.registry import register
from efflm.finetune.adapter import LowRankAdapterConfig, check_targets, lora_apply


@dataclass(frozen=True)
class LoRAFAConfig(LowRankAdapterConfig):
    """LoRA-FA on the target Linears: A frozen at its random init, only B trained."""

    method = "lora_fa"


@register(
    LoRAFAConfig,
    family="finetune",
    title="LoRA-FA: Memory-efficient Low-rank Adaptation (frozen A)",
    arxiv="2308.03303",
    needs_calibration=False,
    paper="lora-fa",
    check=check_targets,
)
def apply(model: torch.nn.Module, config: LoRAFAConfig, calib: Any = None) -> torch.nn.Module:
    return lora_apply(model, config, train_a=False)
