"""QuIP: 2-Bit Quantization of Large Language Models With Guarantees.

arXiv 2307.13304 (Chee, Cai, Kuleshov, De Sa; NeurIPS 2023).
Algorithm: (1) incoherence processing — multiply each weight by random orthogonal matrices on
both sides, Ŵ = U W Vᵀ, and its proxy Hessian accordingly, H ← V H Vᵀ, so that no weight and
no Hessian direction stands out (the outliers that wreck 2-bit grids are spread over all
entries); (2) LDLQ — round Ŵ column by column with the error fed forward through H's LDL
factor, which is GPTQ's solver (``efflm.quantize.ldlq``); (3) at run time x ↦ x Vᵀ before the
quantized matmul and U after it (``efflm.nn.incoherent_linear``).
Differences from the reference code: the transforms are randomized Hadamard ⊗ small random
orthogonal factors (QuIP#'s kind; the paper's Kronecker product of two random orthogonal
matrices where the size has no factor of two); Ŵ is rounded onto efflm's per-group grids
(the paper: one grid per row of the rotated weight) and without its diagonal rescaling or
greedy passes; the transforms are not folded into neighbouring layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from efflm.calib.layerwise import note, run_hessian_groups
from efflm.core.errors import ConfigError
from efflm.core.fields import opt
from efflm.core.registry import register
from efflm.core.selection import ModuleSelection
from efflm.nn import incoherence
from efflm.nn.incoherent_linear import IncoherentLinear
from efflm.quantize import grid
from efflm.quantize.ldlq import gptq_quantize


@dataclass(frozen=True)
class QuIPConfig(ModuleSelection):
    """QuIP of every decoder Linear: random orthogonal transforms on both sides, then LDLQ."""

    method = "quip"
    bits: int = opt(2, "bits per weight code, 2..8 (2 is the paper's headline)")
    group_size: int = opt(
        64,
        "consecutive inputs of the rotated weight sharing one scale; -1: one per output channel; must divide "
        "every input width",
    )
    symmetric: bool = opt(True, "true: zero-centred grid (a scale only); false: min/max grid with a float offset")
    dampening: float = opt(0.01, "fraction of mean(diag H) added to the Hessian's diagonal before Cholesky, in (0, 1)")
    seed: int = opt(0, "seed of the random transforms (each Linear draws its own from it)")

    def __post_init__(self) -> None:
        grid.check_grid_config(self)
        if not 0 < self.dampening < 1:
            raise ConfigError(f"quip: dampening must be in (0, 1), got {self.dampening}")


@register(
    QuIPConfig,
    family="quantize",
    title="QuIP: incoherence processing + LDLQ (2-bit)",
    arxiv="2307.13304",
    needs_calibration=True,
    paper="quip",
    check=grid.check_grid_for_model,
    layerwise=True,
)
def apply(model: torch.nn.Module, config: QuIPConfig, calib: Any) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(config.seed)

    def transform(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return incoherence.random_signs(n, gen), incoherence.random_orthogonal(incoherence.split(n)[1], gen)

    def solve(paths: list[str], linears: list, H: torch.Tensor) -> dict[str, IncoherentLinear]:
        s_in, q_in = transform(linears[0].in_features)  # one input transform V for Linears sharing an input
        outs = [transform(lin.out_features) for lin in linears]
        W = torch.cat([
            incoherence.rotate_weight(lin.weight.data, s_out, q_out, s_in, q_in)
            for lin, (s_out, q_out) in zip(linears, outs)
        ])  # fmt: skip
        codes, scales, offsets, info = gptq_quantize(
            W, incoherence.rotate_hessian(H, s_in, q_in), config.bits, config.group_size, config.symmetric,
            act_order=False, damp=config.dampening,
        )  # fmt: skip
        if info.get("fallback"):
            note(model, f"quip: Cholesky failed for {', '.join(paths)} even at raised damping; RTN used")
        done, row = {}, 0
        for path, linear, (s_out, q_out) in zip(paths, linears, outs):
            rows = slice(row, row + linear.out_features)
            row += linear.out_features
            m = IncoherentLinear(
                linear.in_features, linear.out_features, config.bits, config.group_size, config.symmetric,
                bias=linear.bias is not None, dtype=linear.weight.dtype,
            )  # fmt: skip
            m.q.set_codes(codes[rows], scales[rows], None if offsets is None else offsets[rows])
            m.signs_in.copy_(s_in), m.q_in.copy_(q_in), m.signs_out.copy_(s_out), m.q_out.copy_(q_out)
            if linear.bias is not None:
                m.bias.data.copy_(linear.bias.data)
            linear.weight.data.copy_(m.dequantize(torch.float32))  # the rest of calibration sees it
            done[path] = m
        return done

    return run_hessian_groups(model, calib, solve, desc="quip", select=config.selects)
