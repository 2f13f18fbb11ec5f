"""LLM.int8(): 8-bit Matrix Multiplication for Transformers at Scale.

arXiv 2208.07339 (Dettmers, Lewis, Belkada, Zettlemoyer; NeurIPS 2022).
Algorithm: vector-wise quantization — int8 weights with one absmax scale per output row,
int8 activations with one absmax scale per token, the int8 × int8 product accumulated in
int32 and rescaled by the outer product of the two scale vectors. Mixed-precision
decomposition: the few input feature dimensions where some activation exceeds the outlier
threshold (6.0 in the paper) are taken out of the int8 product and multiplied in floating
point; they are systematic (the same dimensions in every layer) and well under 1% of them.
Differences from the reference code: bitsandbytes' inference path (``Linear8bitLt`` without
fp16 weights) — the outlier columns' weights are the dequantized int8 ones, so the file holds
int8 weights and fp32 row scales only; the product runs on efflm's exact int8 kernel
(``efflm.nn.int8_linear``) instead of cuBLASLt's, and the outlier part in fp32.
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
from efflm.models.arch import decoder_linears, set_module
from efflm.nn.int8_linear import Int8Linear


@dataclass(frozen=True)
class LLMInt8Config(ModuleSelection):
    """LLM.int8() of every decoder Linear: vector-wise int8 with fp outlier columns."""

    method = "llm_int8"
    threshold: float = opt(
        6.0,
        "an input column is multiplied in floating point when any token's |activation| in it exceeds this "
        "(> 0; the paper's and bitsandbytes' default)",
    )

    def __post_init__(self) -> None:
        if not self.threshold > 0:
            raise ConfigError(f"llm_int8: threshold must be positive, got {self.threshold}")


@register(
    LLMInt8Config,
    family="quantize",
    title="LLM.int8(): vector-wise int8 with a mixed-precision outlier decomposition",
    arxiv="2208.07339",
    needs_calibration=False,
    paper="gpt3-int8",
    layerwise=True,
)
def apply(model: torch.nn.Module, config: LLMInt8Config, calib: Any = None) -> torch.nn.Module:
    for path, linear in progress(decoder_linears(model, config.selects), desc="llm_int8"):
        set_module(model, path, Int8Linear.from_linear(linear, outlier_threshold=config.threshold))
    return model
