"""(IA)³ from "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning" (Liu et al., the T-Few paper), arXiv 2205.05638.

Algorithm: learn three vectors per layer that rescale, elementwise, the attention keys, the
attention values and the feed-forward's inner activations: k ⊙ l_k, v ⊙ l_v and
W_down(l_ff ⊙ h). All start at ones (the adapted model starts equal to the base); only the
vectors are trained — about 0.01% of the parameters. Merging multiplies them into W.
Differs from the paper: T-Few's extra losses (unlikelihood, length normalisation) belong to
its few-shot recipe, not to (IA)³, and are left out; peft's IA3 is the same module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from efflm.core.errors import ConfigError
from efflm.core.fields import opt
from efflm.core.registry import register
from efflm.finetune.adapter import AdapterConfig, check_targets, inject, peft_targets
from efflm.nn.adapters import IA3Linear


@dataclass(frozen=True)
class IA3Config(AdapterConfig):
    """(IA)³: a learned vector on each target's output, or input for feedforward_modules."""

    method = "ia3"
    target_modules: tuple[str, ...] = opt(
        ("k_proj", "v_proj", "down_proj"),
        "short names of the decoder Linears that get a learned scaling vector in every layer, or all-linear",
    )
    seed: int = opt(0, "unused: (IA)³'s vectors start at ones, so nothing is drawn")
    feedforward_modules: tuple[str, ...] = opt(
        ("down_proj",), "those of target_modules whose input is scaled instead of their output"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        stray = set(self.feedforward_modules) - set(self.target_modules)
        if stray:
            raise ConfigError(f"ia3: feedforward_modules {sorted(stray)} are not among target_modules")

    def peft_config(self, hf_config: Any) -> dict:
        names = peft_targets(hf_config, self.target_modules)
        return {
            "peft_type": "IA3",
            "target_modules": names,
            "feedforward_modules": peft_targets(hf_config, self.feedforward_modules),
            "fan_in_fan_out": False,
            "init_ia3_weights": True,
        }


@register(
    IA3Config,
    family="finetune",
    title="(IA)3: Few-Shot Parameter-Efficient Fine-Tuning (T-Few)",
    arxiv="2205.05638",
    needs_calibration=False,
    paper="few-shot-parameter-efficient-fine-tuning",
    check=check_targets,
)
def apply(model: torch.nn.Module, config: IA3Config, calib: Any = None) -> torch.nn.Module:
    ff = set(peft_targets(model.config, config.feedforward_modules))
    return inject(
        model,
        config.target_modules,
        config.method,
        lambda path, base, i: IA3Linear(base, path.rsplit(".", 1)[-1] in ff),
    )
