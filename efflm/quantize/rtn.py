"""Round-to-nearest (RTN) weight-only quantization — the baseline every quantization paper beats.

No paper of its own (it is the "RTN" row of GPTQ, arXiv 2210.17323, and AWQ tables).
Algorithm: split each weight row into groups of G inputs; per group pick the symmetric
(zero-centred, Q4_0-style) or asymmetric (min/max with an offset, Q4_1-style) grid of
``efflm.quantize.grid`` and round every weight to its nearest level.
Differences from common code: GPTQ's reference uses an integer zero point for the
asymmetric grid; the float offset here makes re-quantizing a Q4_1 model exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from efflm.core.fields import opt
from efflm.core.progress import progress
from efflm.core.registry import register
from efflm.core.selection import ModuleSelection
from efflm.models.arch import decoder_linears, set_module
from efflm.quantize.grid import SCALES_HELP, check_grid_config, check_grid_for_model, to_quant_linear


@dataclass(frozen=True)
class RTNConfig(ModuleSelection):
    """Round-to-nearest weight-only quantization of every decoder Linear."""

    method = "rtn"
    bits: int = opt(4, "bits per weight code, 2..8")
    group_size: int = opt(
        64, "consecutive inputs sharing one scale; -1: one scale per output channel; must divide every input width"
    )
    symmetric: bool = opt(True, "true: zero-centred grid (a scale only); false: min/max grid with a float offset")
    scales: str = opt("free", SCALES_HELP, quiet=True)

    def __post_init__(self) -> None:
        check_grid_config(self)


@register(
    RTNConfig,
    family="quantize",
    title="Round-to-nearest weight quantization (baseline)",
    arxiv=None,
    needs_calibration=False,
    paper="rtn",
    check=check_grid_for_model,
    layerwise=True,
)
def apply(model: torch.nn.Module, config: RTNConfig, calib: Any = None) -> torch.nn.Module:
    for path, linear in progress(decoder_linears(model, config.selects), desc="rtn"):
        set_module(
            model, path, to_quant_linear(linear, config.bits, config.group_size, config.symmetric, scales=config.scales)
        )
    return model
