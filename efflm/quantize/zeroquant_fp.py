"""ZeroQuant-FP: A Leap Forward in LLMs Post-Training W4A8 Quantization Using Floating-Point Formats.

arXiv 2307.09782 (Wu, Yao, He; 2023).
Algorithm: quantize weights to a floating-point grid — FP4 (E2M1) for W4, or FP8 (E4M3/E5M2)
— with one scale per group of inputs, and activations to FP8 per token (W4A8 is the
headline). Because FP4 weights are cast to FP8 for the product, the paper also studies
scales restricted to powers of two (the cast is then exact, at some accuracy cost).
Differences from the paper: round-to-nearest onto the format (the paper's tables also run
its weights through GPTQ, and add LoRC low-rank error compensation; neither is done here), and
the product runs in fp32 after dequantization (``efflm.nn.fp_linear``) — accuracy of the
formats is measured, not FP8 tensor-core speed.
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
from efflm.nn.fp_formats import FP8, MAX
from efflm.nn.fp_linear import FPLinear
from efflm.quantize.grid import check_group_size


@dataclass(frozen=True)
class ZeroQuantFPConfig(ModuleSelection):
    """Floating-point weights (and FP8 activations) for every decoder Linear."""

    method = "zeroquant_fp"
    weight_format: str = opt("e2m1", "the weights' format: e2m1 (FP4), e4m3 or e5m2 (FP8)")
    act_format: str = opt(
        "e4m3", "the format each Linear's input is rounded to, scaled per token: e4m3, e5m2, or none (weight-only)"
    )
    group_size: int = opt(
        64, "consecutive inputs sharing one weight scale; -1: one per output channel; must divide every input width"
    )
    pow2_scales: bool = opt(False, "round weight scales up to powers of two (FP4 → FP8 casts are then exact; MXFP4)")
    e4m3_scales: bool = opt(
        False, "weight scales are E4M3 values under one power-of-two scale per tensor (NVFP4 with group_size 16)"
    )

    def __post_init__(self) -> None:
        if self.weight_format not in MAX:
            raise ConfigError(f"zeroquant_fp: weight_format must be one of {sorted(MAX)}, got {self.weight_format!r}")
        if self.act_format not in (*FP8, "none"):
            raise ConfigError(f"zeroquant_fp: act_format must be e4m3, e5m2 or none, got {self.act_format!r}")
        if self.group_size == 0 or self.group_size < -1:
            raise ConfigError(f"zeroquant_fp: group_size must be positive or -1, got {self.group_size}")
        if self.pow2_scales and self.e4m3_scales:
            raise ConfigError("zeroquant_fp: pow2_scales and e4m3_scales are two scale formats; choose one")


def check(hf_config: Any, config: ZeroQuantFPConfig) -> None:
    check_group_size(config.method, hf_config, config.group_size)


@register(
    ZeroQuantFPConfig,
    family="quantize",
    title="ZeroQuant-FP: FP4/FP8 weights and FP8 activations (W4A8)",
    arxiv="2307.09782",
    needs_calibration=False,
    paper="zeroquant-fp",
    check=check,
    layerwise=True,
)
def apply(model: torch.nn.Module, config: ZeroQuantFPConfig, calib: Any = None) -> torch.nn.Module:
    act = None if config.act_format == "none" else config.act_format
    for path, linear in progress(decoder_linears(model, config.selects), desc="zeroquant_fp"):
        fp = FPLinear.from_linear(
            linear, config.weight_format, config.group_size, act, config.pow2_scales, config.e4m3_scales
        )
        set_module(model, path, fp)
    return model
