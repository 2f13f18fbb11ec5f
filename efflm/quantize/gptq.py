"""GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers.

arXiv 2210.17323 (Frantar, Ashkboos, Hoefler, Alistarh; ICLR 2023).
Algorithm: per Linear, accumulate H = 2XXᵀ over calibration inputs, dampen its diagonal and
take the upper Cholesky factor of H⁻¹. Quantize columns left to right; after each column
spread its rounding error over the not-yet-quantized columns (w -= err · H⁻¹[i, i:] / H⁻¹[i,i]),
lazily in blocks of 128 columns (the solver: efflm.quantize.ldlq, shared with QuIP; the sweep
inside a block: efflm.calib.sweep, in C).
Optional act-order visits columns by descending H[i,i] with "static" groups (grids fixed
from the original weights, so packing stays in order). Layers in order; by default each
group of Linears inside a layer too ("true sequential"), all in one forward per layer.
Differences from the reference code: a group's grid is computed from the columns' current
(error-updated) values inside the block; when Cholesky fails, damping is raised ×10 up to
three times, then the layer falls back to RTN and the run records it. Weights that are
exactly zero (a pruned model) stay exactly zero on a symmetric grid and the error they
leave is spread like any other — SparseGPT's joint sparse + quantized setting as a recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from efflm.calib.hessian import Hessian
from efflm.calib.layerwise import hessian_groups, note, run
from efflm.core.errors import ConfigError
from efflm.core.fields import opt
from efflm.core.registry import register
from efflm.core.selection import ModuleSelection
from efflm.models.arch import set_module
from efflm.nn.quant_linear import QuantLinear
from efflm.quantize import grid
from efflm.quantize.ldlq import gptq_quantize


@dataclass(frozen=True)
class GPTQConfig(ModuleSelection):
    """GPTQ weight-only quantization of every decoder Linear."""

    method = "gptq"
    bits: int = opt(4, "bits per weight code, 2..8")
    group_size: int = opt(
        64, "consecutive inputs sharing one scale; -1: one scale per output channel; must divide every input width"
    )
    symmetric: bool = opt(True, "true: zero-centred grid (a scale only); false: min/max grid with a float offset")
    scales: str = opt("free", grid.SCALES_HELP, quiet=True)
    act_order: bool = opt(
        True,
        "quantize columns in descending order of the Hessian diagonal, with static groups (grids fixed from "
        "the original weights, so codes stay in column order); false: left to right",
    )
    dampening: float = opt(0.01, "fraction of mean(diag H) added to the Hessian's diagonal before Cholesky, in (0, 1)")
    block_size: int = opt(128, "columns per lazy-update block of the sweep (≥ 1)")
    true_sequential: bool = opt(
        True,
        "one forward per layer over the whole calibration batch, each group of Linears quantized as the forward "
        "reaches it, so o_proj's Hessian sees the quantized q/k/v outputs (the reference LLaMA script's and "
        "AutoGPTQ's option); false: llm-compressor's order (observe the whole layer in batches of 4, quantize, "
        "forward again)",
    )

    def __post_init__(self) -> None:
        grid.check_grid_config(self)
        if not 0 < self.dampening < 1:
            raise ConfigError(f"gptq: dampening must be in (0, 1), got {self.dampening}")
        if self.block_size < 1:
            raise ConfigError(f"gptq: block_size must be positive, got {self.block_size}")


@register(
    GPTQConfig,
    family="quantize",
    title="GPTQ: Accurate Quantization for Generative Pre-trained Transformers",
    arxiv="2210.17323",
    needs_calibration=True,
    paper="gptq",
    check=grid.check_grid_for_model,
    layerwise=True,
)
def apply(model: torch.nn.Module, config: GPTQConfig, calib: Any) -> torch.nn.Module:
    pending: dict[str, tuple] = {}  # path -> (codes, scales, offsets), packed once the layer is done

    def solve(i: int, layer: torch.nn.Module, observers: dict) -> None:
        for paths, H in hessian_groups(observers, take=True):  # Linears sharing an input: one stacked matrix
            linears = [model.get_submodule(p) for p in paths]
            W = torch.cat([lin.weight.data for lin in linears])
            codes, scales, offsets, info = gptq_quantize(
                W,
                H,  # the group's Hessian is freed as the solver goes
                config.bits,
                config.group_size,
                config.symmetric,
                config.act_order,
                config.dampening,
                config.block_size,
                consume=True,
                scales=config.scales,
            )
            if info.get("fallback"):
                note(model, f"gptq: Cholesky failed for {', '.join(paths)} even at raised damping; RTN used")
            row = 0
            for path, linear in zip(paths, linears):
                rows = slice(row, row + linear.out_features)
                row += linear.out_features
                part = (codes[rows], scales[rows], None if offsets is None else offsets[rows])
                # the rest of calibration computes with the quantized values (in place: a forward may be under way)
                linear.weight.data.copy_(grid.dequantize(*part, config.bits, config.group_size))
                pending[path] = part

    def finish(i: int, layer: torch.nn.Module) -> None:
        for path, (codes, scales, offsets) in pending.items():
            linear = model.get_submodule(path)
            ql = QuantLinear(
                linear.in_features,
                linear.out_features,
                config.bits,
                config.group_size,
                config.symmetric,
                bias=linear.bias is not None,
                dtype=linear.weight.dtype,
            ).to(linear.weight.device)
            ql.set_codes(codes, scales, offsets)
            if linear.bias is not None:
                ql.bias.data.copy_(linear.bias.data)
            set_module(model, path, ql)
        pending.clear()

    hessian = lambda path, linear: Hessian(linear.in_features, stats=False)  # noqa: E731
    return run(
        model, calib, hessian, solve, desc="gptq", one_pass=config.true_sequential, finish=finish, select=config.selects
    )
