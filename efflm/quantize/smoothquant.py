"""SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language Models.

arXiv 2211.10438 (Xiao, Lin, Seznec, Wu, Demouth, Han; ICML 2023).
Algorithm: activation outliers live in a few input channels and make per-token int8
activations lossy. Move the difficulty into the weights: per input channel
s_j = max|X_j|^α / max|W_j|^(1−α) (α = migration strength), X ← X / s folded into the
preceding op, W ← W · diag(s); then W8A8 (per-channel int8 weights, per-token int8 acts).
Differences from the reference code: statistics come from the shared layer-by-layer runner
(each layer sees the already-quantized earlier layers); besides the norm → q/k/v and
norm → gate/up pairs of the reference, the down_proj input is smoothed through up_proj's
rows (and o_proj's through v_proj's when the shapes allow it, i.e. without GQA).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from efflm.calib.layerwise import run
from efflm.core.errors import ConfigError
from efflm.core.fields import opt
from efflm.core.registry import register
from efflm.core.selection import ModuleSelection
from efflm.models.arch import layout_for, set_module
from efflm.nn.int8_linear import Int8Linear
from efflm.quantize.scaling import fold_offset, fold_scales, may_fold


def smoothing_scales(act_max: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^α / max_i|W_ij|^(1−α) over every weight reading input j."""
    w_max = torch.cat([w.float().abs() for w in weights]).amax(dim=0)
    s = act_max.clamp(min=1e-5) ** alpha / w_max.clamp(min=1e-5) ** (1 - alpha)
    return s.clamp(min=1e-5)


class _ActMax:
    """Per-channel max |x| only (SmoothQuant needs no Hessian)."""

    def __init__(self, n_in: int):
        self.absmax = torch.zeros(n_in)

    def add(self, x: torch.Tensor) -> None:
        self.absmax = torch.maximum(self.absmax.to(x.device), x.reshape(-1, x.shape[-1]).float().abs().amax(dim=0))


@dataclass(frozen=True)
class SmoothQuantConfig(ModuleSelection):
    """SmoothQuant W8A8: smoothing, then int8 weights and dynamic per-token int8 activations for
    every decoder Linear. The paper tunes alpha per model (0.5 by default); efflm's default is tuned
    on the development split (``benchmarks/smoothquant_alpha.py``), never the evaluation split."""

    method = "smoothquant"
    alpha: float = opt(
        0.7,
        "migration strength in [0, 1]: smoothing scales s = max|X|^α / max|W|^(1−α) move quantization "
        "difficulty from activations (α → 1) to weights",
    )

    def __post_init__(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"smoothquant: alpha must be in [0, 1], got {self.alpha}")


@register(
    SmoothQuantConfig,
    family="quantize",
    title="SmoothQuant: Accurate and Efficient Post-Training Quantization for LLMs",
    arxiv="2211.10438",
    needs_calibration=True,
    paper="smoothquant",
    layerwise=True,
)
def apply(model: torch.nn.Module, config: SmoothQuantConfig, calib: Any) -> torch.nn.Module:
    layout = layout_for(model.config)

    def solve(i: int, layer: torch.nn.Module, observers: dict) -> None:
        prefix = f"{layout.layers}.{i}."
        for group, source_name in zip(layout.input_groups, layout.input_sources):
            if not may_fold(prefix, group, source_name, layout.linears, config.selects):
                continue  # no exact fold, or a Linear the fold would change is ignored
            linears = [layer.get_submodule(n) for n in group]
            source = layer.get_submodule(source_name)
            if source.weight.shape[0] != linears[0].in_features:
                continue  # o_proj under GQA: nothing to fold into
            s = smoothing_scales(observers[prefix + group[0]].absmax, [lin.weight for lin in linears], config.alpha)
            fold_scales(source, s, fold_offset(layout, source_name))
            for lin in linears:
                lin.weight.data.mul_(s.to(lin.weight.dtype))
        for name in layout.linears:
            if config.selects(prefix + name):
                set_module(layer, name, Int8Linear.from_linear(layer.get_submodule(name)))

    return run(model, calib, lambda path, linear: _ActMax(linear.in_features), solve, desc="smoothquant")
