"""ZeroQuant: Efficient and Affordable Post-Training Quantization for Large-Scale Transformers.

arXiv 2206.01861 (Yao, Aminabadi, Zhang, Wu, Li, He; NeurIPS 2022).
Algorithm: fine-grained hardware-friendly quantization — group-wise weights (one grid per
group of inputs of each row) and token-wise dynamic activations (one int8 scale per token) —
plus LKD, layer-by-layer knowledge distillation: each decoder layer, its Linears
fake-quantized (straight-through estimator), is trained to reproduce the original layer's
output on the original model's activations entering it, MSE(L_k(X), L̂_k(X)); only one
layer is ever trained at a time, and no labels or original training data are needed.
Differences from the reference code: the grids are efflm's (symmetric per group by default),
activations are quantized per token in every Linear's input only (not the attention's
internal products, whose kernels the paper fuses), LKD trains each layer for a fixed number
of Adam steps on efflm's calibration windows (the paper: its training data); the weights are
then packed onto the grid (``ActQuantLinear``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from efflm.calib.layerwise import first_layer_inputs, layer_output
from efflm.core.errors import ConfigError, EfflmError
from efflm.core.fields import opt
from efflm.core.progress import progress
from efflm.core.registry import register
from efflm.core.selection import ModuleSelection
from efflm.models.arch import decoder_layers, layout_for, set_module
from efflm.models.streaming import each_layer
from efflm.quantize import grid
from efflm.quantize.fake_quant import FakeQuantLinear


@dataclass(frozen=True)
class ZeroQuantConfig(ModuleSelection):
    """ZeroQuant of every decoder Linear: group-wise weights, token-wise activations, LKD."""

    method = "zeroquant"
    bits: int = opt(4, "bits per weight code, 2..8")
    group_size: int = opt(
        64, "consecutive inputs sharing one scale; -1: one scale per output channel; must divide every input width"
    )
    symmetric: bool = opt(True, "true: zero-centred grid (a scale only); false: min/max grid with a float offset")
    act_bits: int = opt(8, "bits of each Linear's input, one dynamic scale per token, 2..8; 0: weight-only")
    lkd_steps: int = opt(
        50, "Adam steps of layer-by-layer distillation per decoder layer (≥ 0; 0: no LKD, the paper's plain rows)"
    )
    lkd_lr: float = opt(1e-4, "learning rate of those Adam steps (> 0)")

    def __post_init__(self) -> None:
        grid.check_grid_config(self)
        if self.act_bits != 0 and not 2 <= self.act_bits <= 8:
            raise ConfigError(f"zeroquant: act_bits must be 0 or in 2..8, got {self.act_bits}")
        if self.lkd_steps < 0:
            raise ConfigError(f"zeroquant: lkd_steps must be ≥ 0, got {self.lkd_steps}")
        if not self.lkd_lr > 0:
            raise ConfigError(f"zeroquant: lkd_lr must be positive, got {self.lkd_lr}")


def distill_layer(layer, fakes, batches, targets, steps: int, lr: float) -> float:
    """LKD: ``steps`` Adam steps of MSE(layer(x), target) over the fake-quantized Linears'
    weights (cycling through the batches); returns the last loss."""
    params = [p for f in fakes for p in (f.weight, f.bias) if p is not None]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    loss = torch.zeros(())
    with torch.enable_grad():
        for step in range(steps):
            (hidden, kwargs), target = batches[step % len(batches)], targets[step % len(batches)]
            loss = F.mse_loss(layer_output(layer, hidden, kwargs).float(), target.float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    for p in params:
        p.requires_grad_(False)
    return loss.item()


@register(
    ZeroQuantConfig,
    family="quantize",
    title="ZeroQuant: group-wise weights, token-wise activations, layer-by-layer distillation",
    arxiv="2206.01861",
    needs_calibration=True,
    paper="zeroquant",
    check=grid.check_grid_for_model,
    layerwise=True,
)
def apply(model: torch.nn.Module, config: ZeroQuantConfig, calib: Any) -> torch.nn.Module:
    if calib is None or calib.ndim != 2:
        raise EfflmError("zeroquant needs calibration data: a [samples, tokens] batch of token ids")
    layout = layout_for(model.config)
    saved = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    inputs = first_layer_inputs(model, calib)
    try:
        for i, layer in progress(each_layer(model), desc="zeroquant", total=len(decoder_layers(model))):
            with torch.no_grad():  # the original layer's outputs: LKD's targets and the next layer's inputs
                targets = [layer_output(layer, h, kw) for h, kw in inputs]
            paths = [p for p in (f"{layout.layers}.{i}.{name}" for name in layout.linears) if config.selects(p)]
            fakes = [FakeQuantLinear(model.get_submodule(p), config.bits, config.group_size, config.symmetric,
                                     config.act_bits) for p in paths]  # fmt: skip
            for path, fake in zip(paths, fakes):
                set_module(model, path, fake)
            if config.lkd_steps:
                distill_layer(layer, fakes, inputs, targets, config.lkd_steps, config.lkd_lr)
            for path, fake in zip(paths, fakes):
                packed = grid.to_quant_linear(
                    fake, config.bits, config.group_size, config.symmetric, act_bits=config.act_bits
                )
                set_module(model, path, packed)
            inputs = [(t, kw) for t, (_, kw) in zip(targets, inputs)]
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(saved.get(name, False))
    return model
