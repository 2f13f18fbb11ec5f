"""NF4 with double quantization — the storage data type of QLoRA.

QLoRA: Efficient Finetuning of Quantized LLMs (Dettmers et al.), arXiv 2305.14314.
Algorithm: split each weight row into blocks of 64; scale each block by its absmax into
[−1, 1] and round every weight to the nearest of the 16 NormalFloat levels (the quantiles of
a standard normal, with an exact zero). Double quantization then stores the block absmaxes as
8-bit codes around their mean, one fp32 scale per 256 of them.
Differs from bitsandbytes: a linear int8 second level instead of its dynamic 8-bit map (see
``efflm.nn.nf4_linear``); the math of the first level is the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from efflm.core.errors import ConfigError
from efflm.core.fields import opt
from efflm.core.progress import progress
from efflm.core.registry import register
from efflm.core.selection import ModuleSelection
from efflm.models.arch import decoder_linears, in_features, set_module
from efflm.models.sources import own_memory
from efflm.nn.nf4_linear import NF4Linear


@dataclass(frozen=True)
class NF4Config(ModuleSelection):
    """NF4 weight-only quantization of every decoder Linear (frozen base for QLoRA)."""

    method = "nf4"
    block: int = opt(64, "consecutive weights of a row sharing one absmax (positive, even; the paper: 64)")
    scale_block: int = opt(
        256, "absmaxes sharing one second-level fp32 scale in double quantization (positive; the paper: 256)"
    )

    def __post_init__(self) -> None:
        if self.block <= 0 or self.block % 2 or self.scale_block <= 0:
            raise ConfigError(f"nf4: block must be a positive even number and scale_block positive, got {self}")


def check(hf_config: Any, config: NF4Config) -> None:
    for name, width in in_features(hf_config).items():
        if width % config.block:
            raise ConfigError(f"nf4: block {config.block} does not divide {name}'s {width} inputs")


def quantize_linears(model: torch.nn.Module, config: NF4Config) -> torch.nn.Module:
    for path, linear in progress(decoder_linears(model, config.selects), desc="nf4"):
        set_module(model, path, NF4Linear.from_linear(linear, config.block, config.scale_block))
    return own_memory(model)  # the replaced fp32 weights' file pages go (else they stay resident)


@register(
    NF4Config,
    family="quantize",
    title="QLoRA: NF4 + double quantization (storage data type)",
    arxiv="2305.14314",
    needs_calibration=False,
    paper="qlora",
    check=check,
    layerwise=True,
)
def apply(model: torch.nn.Module, config: NF4Config, calib: Any = None) -> torch.nn.Module:
    return quantize_linears(model, config)
