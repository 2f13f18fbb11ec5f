"""AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration.

arXiv 2306.00978 (Lin, Tang, Tang, Yang, Chen, Wang, Xiao, Dang, Gan, Han; MLSys 2024).
Algorithm: weights that meet large activations matter most. Per group of Linears sharing an
input, try per-input-channel scales s = mean|x|^α (α on a grid in [0, 1)), quantize W·diag(s)
and divide by s again; keep the α whose output error on the calibration inputs is smallest,
and fold 1/s into the op that produces the input (a norm's weight, or v_proj / up_proj rows)
so the float model is unchanged. Then search a per-group clipping ratio of the weight range
that minimises each group's output error, and round to nearest.
Differences from the reference code: the output error of a candidate is measured exactly on
the Linears' outputs through the calibration Hessian, err = tr(ΔW H ΔWᵀ) (the reference runs
the whole attention / MLP block on a sample); clipping uses the diagonal H blocks (the
reference's per-group partial sums, on all calibration tokens instead of a subsample); the α
grid is searched coarse-to-fine (every other point, then the best one's neighbours), which
finds the grid's optimum when the error is unimodal in α.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from efflm.calib.hessian import Hessian
from efflm.calib.layerwise import run
from efflm.core.errors import ConfigError
from efflm.core.fields import opt
from efflm.core.registry import register
from efflm.core.selection import ModuleSelection
from efflm.models.arch import layout_for, set_module
from efflm.quantize import grid
from efflm.quantize.scaling import fold_offset, fold_scales, may_fold


def output_error(dW: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Σ over calibration tokens of ‖x ΔWᵀ‖², up to a constant: tr(ΔW H ΔWᵀ)."""
    return ((dW @ H) * dW).sum()


def scale_candidates(x_mean: torch.Tensor, w_mean: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """s = mean|x|^α (÷ mean|w|^(1−α) with duo scaling), normalised so √(max·min) = 1."""
    s = x_mean.clamp(min=1e-4) ** alpha
    if w_mean is not None:
        s = s / w_mean.clamp(min=1e-4) ** (1 - alpha)
    return s / (s.max() * s.min()).sqrt()


def search_scale(
    W: torch.Tensor,
    H: torch.Tensor,
    x_mean: torch.Tensor,
    bits: int,
    group_size: int,
    symmetric: bool,
    scales: str = "free",
    n_grid: int = 20,
    duo: bool = False,
) -> tuple[torch.Tensor, float]:
    """Best per-input-channel scale for weight W [out, in] (α = 0 means s = 1: plain RTN)."""
    w_mean = None
    if duo:
        g = group_size if group_size > 0 else W.shape[1]
        wg = W.abs().reshape(W.shape[0], -1, g)
        w_mean = (wg / wg.amax(dim=-1, keepdim=True).clamp(min=1e-8)).reshape(W.shape).mean(dim=0)
    tried: dict[int, tuple[float, torch.Tensor]] = {}

    def err_at(i: int) -> float:
        if i not in tried:
            s = scale_candidates(x_mean, w_mean, i / n_grid)
            dW = grid.fake_quantize(W * s, bits, group_size, symmetric, scales) / s - W
            tried[i] = (output_error(dW, H).item(), s)
        return tried[i][0]

    # every other grid point first, then the two neighbours of the best: the grid's optimum
    # whenever the error is unimodal in α, at ~60% of the evaluations
    best = min(range(0, n_grid, 2), key=err_at)
    best = min((i for i in (best - 1, best, best + 1) if 0 <= i < n_grid), key=err_at)
    best_alpha, best_s = best / n_grid, tried[best][1]
    return best_s, best_alpha


def search_clip(
    W: torch.Tensor,
    H: torch.Tensor,
    bits: int,
    group_size: int,
    symmetric: bool,
    scales: str = "free",
    n_grid: int = 20,
    max_shrink: float = 0.5,
) -> torch.Tensor:
    """W clipped per (row, group) to the ratio r of its range that minimises that group's output
    error Δw_g H_gg Δw_gᵀ, r on a grid from 1 down to 1 − max_shrink."""
    out, cols = W.shape
    g = group_size if group_size > 0 else cols
    Wg = W.reshape(out, cols // g, g)
    Hg = torch.stack([H[j : j + g, j : j + g] for j in range(0, cols, g)])  # [groups, g, g]
    lo, hi = Wg.amin(dim=-1, keepdim=True), Wg.amax(dim=-1, keepdim=True)
    best_err = torch.full((out, cols // g), float("inf"))
    best = Wg.clone()
    for i in range(int(max_shrink * n_grid) + 1):
        r = 1 - i / n_grid
        Wc = torch.minimum(torch.maximum(Wg, lo * r), hi * r)
        dW = grid.fake_quantize(Wc.reshape(out, cols), bits, group_size, symmetric, scales).reshape(Wg.shape) - Wg
        err = torch.einsum("ogi,gij,ogj->og", dW, Hg, dW)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better[..., None], Wc, best)
    return best.reshape(out, cols)


@dataclass(frozen=True)
class AWQConfig(ModuleSelection):
    """AWQ weight-only quantization of every decoder Linear."""

    method = "awq"
    bits: int = opt(4, "bits per weight code, 2..8")
    group_size: int = opt(
        64, "consecutive inputs sharing one scale; -1: one scale per output channel; must divide every input width"
    )
    symmetric: bool = opt(True, "true: zero-centred grid (a scale only); false: min/max grid with a float offset")
    scales: str = opt("free", grid.SCALES_HELP, quiet=True)
    n_grid: int = opt(
        20, "grid points of the scale search: α = i / n_grid for i in 0..n_grid−1 (also the clipping ratios' step)"
    )
    duo_scaling: bool = opt(
        False, "scales s = mean|x|^α / mean|w|^(1−α) (llm-compressor's default); false: the paper's mean|x|^α"
    )
    clip: bool = opt(True, "search a clipping ratio of each weight group's range (never for q_proj/k_proj)")

    def __post_init__(self) -> None:
        grid.check_grid_config(self)
        if self.n_grid < 1:
            raise ConfigError(f"awq: n_grid must be positive, got {self.n_grid}")


@register(
    AWQConfig,
    family="quantize",
    title="AWQ: Activation-aware Weight Quantization",
    arxiv="2306.00978",
    needs_calibration=True,
    paper="awq",
    check=grid.check_grid_for_model,
    layerwise=True,
)
def apply(model: torch.nn.Module, config: AWQConfig, calib: Any) -> torch.nn.Module:
    layout = layout_for(model.config)
    no_clip = set(layout.attn_linears[:2])  # q/k: clipping hurts through the softmax (paper §3)
    args = (config.bits, config.group_size, config.symmetric, config.scales)

    def solve(i: int, layer: torch.nn.Module, observers: dict) -> None:
        prefix = f"{layout.layers}.{i}."
        hessians = {}
        for group, source_name in zip(layout.input_groups, layout.input_sources):
            obs = observers[prefix + group[0]]
            linears = [layer.get_submodule(n) for n in group]
            H = obs.H
            fold = may_fold(prefix, group, source_name, layout.linears, config.selects)
            source = layer.get_submodule(source_name) if fold else None
            if (
                fold and source.weight.shape[0] == linears[0].in_features
            ):  # foldable (not o_proj under GQA: v rows ≠ o inputs)
                W = torch.cat([lin.weight.data.float() for lin in linears])
                s, _ = search_scale(W, H, obs.absmean, *args, n_grid=config.n_grid, duo=config.duo_scaling)
                fold_scales(source, s, fold_offset(layout, source_name))
                for lin in linears:
                    lin.weight.data.mul_(s.to(lin.weight.dtype))
                H = H / (s[:, None] * s[None, :])  # the inputs are now x / s
            hessians.update({n: H for n in group})
        for name in layout.linears:
            if not config.selects(prefix + name):  # ignored: neither scaled nor quantized
                continue
            linear = layer.get_submodule(name)
            W = linear.weight.data.float()
            if config.clip and name not in no_clip:
                W = search_clip(W, hessians[name], *args, n_grid=config.n_grid)
            set_module(layer, name, grid.to_quant_linear(linear, *args[:3], weight=W, scales=config.scales))

    return run(model, calib, lambda path, linear: Hessian(linear.in_features), solve, desc="awq")
