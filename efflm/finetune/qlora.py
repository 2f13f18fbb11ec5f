"""QLoRA: Efficient Finetuning of Quantized LLMs (Dettmers et al.), arXiv 2305.14314.

Algorithm: store the frozen base in 4-bit NormalFloat with double-quantized block scales
(``efflm.nn.nf4_linear``); train LoRA adapters on every Linear in 16/32-bit, back-propagating
through the dequantized base; the gradient never touches the 4-bit weights.
Differs from the paper: paged optimizers (a CUDA unified-memory feature) do not apply on
CPU; the second quantization level is linear int8 (see ``nn/nf4_linear.py``). The adapter
is saved as peft's LoRA; the NF4 base is saved with ``efflm compress`` (recipe ``nf4``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from efflm.core.errors import ConfigError
from efflm.core.fields import opt
from efflm.core.registry import register
from efflm.finetune.adapter import ALL, LowRankAdapterConfig, check_targets, lora_apply
from efflm.models.arch import decoder_linears, in_features, set_module
from efflm.models.sources import own_memory
from efflm.nn.module_registry import role
from efflm.nn.nf4_linear import NF4Linear


@dataclass(frozen=True)
class QLoRAConfig(LowRankAdapterConfig):
    """LoRA on an NF4 base (a base not yet quantized is quantized first)."""

    method = "qlora"
    target_modules: tuple[str, ...] = opt(
        (ALL,),
        "short names of the decoder Linears given a LoRA adapter in every layer, or all-linear (every decoder "
        "Linear is stored in NF4 either way)",
    )
    block: int = opt(64, "NF4 block: consecutive weights sharing one absmax (positive, even, dividing every input)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.block <= 0 or self.block % 2:
            raise ConfigError(f"qlora: block must be a positive even number, got {self.block}")


def check(hf_config: Any, config: QLoRAConfig) -> None:
    check_targets(hf_config, config)
    for name, width in in_features(hf_config).items():
        if width % config.block:
            raise ConfigError(f"qlora: NF4 block {config.block} does not divide {name}'s {width} inputs")


@register(
    QLoRAConfig,
    family="finetune",
    title="QLoRA: Efficient Finetuning of Quantized LLMs",
    arxiv="2305.14314",
    needs_calibration=False,
    paper="qlora",
    check=check,
)
def apply(model: torch.nn.Module, config: QLoRAConfig, calib: Any = None) -> torch.nn.Module:
    replaced = 0
    for path, linear in decoder_linears(model):
        if isinstance(linear, torch.nn.Linear) and role(linear) is None:
            set_module(model, path, NF4Linear.from_linear(linear, config.block))
            replaced += 1
    if replaced:  # a base already in NF4 (recipe nf4, maybe streamed) is left as it is
        own_memory(model)  # the replaced fp32 weights' file pages go (else they stay resident)

    return lora_apply(model, config)
