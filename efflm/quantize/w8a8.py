"""W8A8: int8 weights (per output channel) times int8 activations (per token, dynamic).

The naive W8A8 baseline of the SmoothQuant paper (arXiv 2211.10438, its "W8A8" rows; our
activations are per-token dynamic, which is already kinder than its per-tensor static ones).
Algorithm: every decoder Linear becomes an ``Int8Linear`` (``efflm.nn.int8_linear``: int8
per-channel weights, int8 per-token activations, exact int32 accumulation); no smoothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from efflm.core.progress import progress
from efflm.core.registry import register
from efflm.core.selection import ModuleSelection
from efflm.models.arch import decoder_linears, set_module
from efflm.nn.int8_linear import Int8Linear


@dataclass(frozen=True)
class W8A8Config(ModuleSelection):
    """Naive W8A8 of every decoder Linear: int8 per-channel weights, int8 per-token activations."""

    method = "w8a8"


@register(
    W8A8Config,
    family="quantize",
    title="Naive W8A8 (int8 weights and activations, no smoothing)",
    arxiv=None,
    needs_calibration=False,
    paper="w8a8",
    layerwise=True,
)
def apply(model: torch.nn.Module, config: W8A8Config, calib: Any = None) -> torch.nn.Module:
    for path, linear in progress(decoder_linears(model, config.selects), desc="w8a8"):
        set_module(model, path, Int8Linear.from_linear(linear))
    return model
