"""Magnitude pruning — the baseline every LLM pruning paper compares against.

No paper of its own (the "Magnitude" row of SparseGPT, arXiv 2301.00774, and Wanda,
arXiv 2306.11695). Algorithm: in every decoder Linear, zero the weights of smallest |W|,
compared within each output row (a fraction ``sparsity`` of every row) or, for an N:M
pattern, within every run of M consecutive inputs of a row (keep the N largest).
Differences from common code: none in the math; zeros stay stored densely (an ordinary
Hugging Face model), and the harness reports an "as-sparse" bytes estimate beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from efflm.core.progress import progress
from efflm.core.registry import register
from efflm.models.arch import decoder_linears
from efflm.prune.masks import SparsityConfig, check_sparsity_for_model, prune_mask


@dataclass(frozen=True)
class MagnitudeConfig(SparsityConfig):
    """Zero the smallest-|W| weights of every decoder Linear (sparsity, pattern: see SparsityConfig)."""

    method = "magnitude"


@register(
    MagnitudeConfig,
    family="prune",
    title="Magnitude pruning (baseline)",
    arxiv=None,
    needs_calibration=False,
    paper="magnitude-pruning",
    check=check_sparsity_for_model,
    layerwise=True,
)
@torch.no_grad()
def apply(model: torch.nn.Module, config: MagnitudeConfig, calib: Any = None) -> torch.nn.Module:
    for _, linear in progress(decoder_linears(model, config.selects), desc="magnitude"):
        w = linear.weight.data
        w.masked_fill_(prune_mask(w.abs().float(), config.sparsity, config.pattern), 0)
    return model
