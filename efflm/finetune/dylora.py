"""DyLoRA: Dynamic Search-Free Low-Rank Adaptation (Valipour et al.), EACL 2023 (arXiv 2210.07558).

Algorithm: LoRA trained over a range of ranks at once: each step samples b uniformly from
{1..r} and runs the adapter truncated to A[:b], B[:, :b] at scale α/b, so the factors are
nested by importance and one run can be truncated to any rank ≤ r afterwards.
Differs from the paper: it also offers updating only the b-th row/column ("frozen" mode);
here the whole truncated block is updated (its "unfrozen" mode, the paper's default for
quality). peft has no DyLoRA type: ``save_rank`` truncates and saves as peft's LoRA at that
rank (scale α/rank preserved), noted in efflm_adapter.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from efflm.core.errors import ConfigError
from efflm.core.fields import opt
from efflm.core.registry import register
from efflm.finetune.adapter import LowRankAdapterConfig, check_targets, lora_apply
from efflm.finetune.hooks import TrainHooks
from efflm.nn.adapters import LoraLinear


@dataclass(frozen=True)
class DyLoRAConfig(LowRankAdapterConfig):
    """DyLoRA: LoRA trained at a rank b ~ U{1..r} drawn each step."""

    method = "dylora"
    save_rank: int = opt(0, "rank the saved adapter is truncated to, in 0..r (0: r)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.save_rank <= self.r:
            raise ConfigError(f"dylora: save_rank must be in 0..r ({self.r}), got {self.save_rank}")

    def peft_config(self, hf_config: Any) -> dict:
        return {**super().peft_config(hf_config), "r": self.save_rank or self.r}


def set_rank(model: torch.nn.Module, rank: int) -> None:
    """Truncate every LoRA adapter of ``model`` to its first ``rank`` components."""
    for m in model.modules():
        if isinstance(m, LoraLinear):
            m.set_rank(rank)


class DyLoRAHooks(TrainHooks):
    def before_step(self, model, step, generator):
        r = next(m.r for m in model.modules() if isinstance(m, LoraLinear))
        set_rank(model, int(torch.randint(1, r + 1, (1,), generator=generator)))

    def finish(self, model):
        r = next(m.r for m in model.modules() if isinstance(m, LoraLinear))
        set_rank(model, r)


@register(
    DyLoRAConfig,
    family="finetune",
    title="DyLoRA: Dynamic Search-Free Low-Rank Adaptation",
    arxiv="2210.07558",
    needs_calibration=False,
    paper="dylora",
    check=check_targets,
    hooks=DyLoRAHooks,
)
def apply(model: torch.nn.Module, config: DyLoRAConfig, calib: Any = None) -> torch.nn.Module:
    return lora_apply(model, config)
