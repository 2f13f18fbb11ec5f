"""LoRA: Low-Rank Adaptation of Large Language Models (Hu et al.), arXiv 2106.09685.

Algorithm: freeze W; learn ΔW = B·A with A [r, in] (random) and B [out, r] (zero), so the
adapted model starts equal to the base; the forward adds (α/r)·B·A·x to the frozen product.
Only A and B (r·(in + out) numbers per Linear) are trained and saved; merging adds ΔW to W.
Differs from microsoft/LoRA and peft: none in the math (peft's init: kaiming-uniform A, zero
B); the frozen base may be any efflm module (packed 4-bit, NF4, low-rank), called as stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from efflm.core.registry import register
from efflm.finetune.adapter import LowRankAdapterConfig, check_targets, lora_apply


@dataclass(frozen=True)
class LoRAConfig(LowRankAdapterConfig):
    """LoRA on the target Linears: rank r, update scaled by alpha / r, dropout on its input."""

    method = "lora"


@register(
    LoRAConfig,
    family="finetune",
    title="LoRA: Low-Rank Adaptation of Large Language Models",
    arxiv="2106.09685",
    needs_calibration=False,
    paper="lora",
    check=check_targets,
)
def apply(model: torch.nn.Module, config: LoRAConfig, calib: Any = None) -> torch.nn.Module:
    return lora_apply(model, config)
