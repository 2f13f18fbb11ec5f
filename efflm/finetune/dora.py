"""DoRA: Weight-Decomposed Low-Rank Adaptation (Liu et al.), arXiv 2402.09353.

Algorithm: write W = m·V/‖V‖ (magnitude m per output row, direction V); keep V's update
low-rank, V + ΔV = W + (α/r)·B·A, and train m as well:
W' = m ⊙ (W + (α/r)BA) / ‖W + (α/r)BA‖_row, m initialised to ‖W‖_row so training starts at W.
The norm is treated as a constant in the backward pass (the paper's §4.3 memory saving).
Differs from the authors' and peft's code: none in the math; saved as peft's LoRA with
``use_dora`` and ``lora_magnitude_vector``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from efflm.core.registry import register
from efflm.finetune.adapter import LowRankAdapterConfig, check_targets, lora_apply


@dataclass(frozen=True)
class DoRAConfig(LowRankAdapterConfig):
    """DoRA on the target Linears: LoRA's direction update plus a trained magnitude per row."""

    method = "dora"

    def peft_config(self, hf_config: Any) -> dict:
        return {**super().peft_config(hf_config), "use_dora": True}


@register(
    DoRAConfig,
    family="finetune",
    title="DoRA: Weight-Decomposed Low-Rank Adaptation",
    arxiv="2402.09353",
    needs_calibration=False,
    paper="dora",
    check=check_targets,
)
def apply(model: torch.nn.Module, config: DoRAConfig, calib: Any = None) -> torch.nn.Module:
    return lora_apply(model, config, dora=True)
