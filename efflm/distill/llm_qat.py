"""LLM-QAT: Data-Free Quantization Aware Training for Large Language Models (Liu et al.),
arXiv 2305.17888.

Algorithm: the full-precision model is the teacher and writes the training text itself
(``efflm distill-data``: a random first token, the next few taken greedily, the rest sampled),
so no original data is needed; the student is the same model with every decoder Linear's
weight fake-quantized in the forward pass (straight-through estimator in the backward), trained
on that text by logit distillation (the teacher's soft labels, forward KL at temperature 1).
After training the weights are rounded once more onto the same grid and packed into efflm's
real low-bit format (``QuantLinear``), so the model runs through the usual kernels.
Differs from facebookresearch/LLM-QAT: efflm's weight grid (per-group min/max, symmetric or
not; the paper uses per-channel symmetric MinMax, ``group_size: -1``); activation and KV-cache
fake quantization are not done (efflm's kernels are weight-only); every other weight
(embeddings, norms) trains in full precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from efflm.core.errors import ConfigError
from efflm.core.fields import opt
from efflm.core.registry import register
from efflm.distill.objective import DistillConfig, DistillHooks, check
from efflm.finetune.full_params import FullConfig, unfreeze
from efflm.models.arch import decoder_linears, set_module
from efflm.quantize.fake_quant import FakeQuantLinear
from efflm.quantize.grid import check_grid_config, check_grid_for_model, to_quant_linear


@dataclass(frozen=True)
class LLMQATConfig(DistillConfig):
    """LLM-QAT: the distillation fields as kd (forward KL at temperature 1 by default), every
    weight trained through the weight grid it is then packed onto."""

    method = "llm_qat"
    adapt: str = opt("full", "must be full: quantization-aware training trains every weight")
    bits: int = opt(4, "bits per weight code of the grid trained for and packed into, 2..8")
    group_size: int = opt(
        64, "consecutive inputs sharing one scale; -1: one scale per output channel; must divide every input width"
    )
    symmetric: bool = opt(True, "true: zero-centred grid (a scale only); false: min/max grid with a float offset")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_grid_config(self)
        if self.adapt != "full":
            raise ConfigError("llm_qat: adapt must be full (quantization-aware training trains every weight)")


def check_model(hf_config: Any, config: LLMQATConfig) -> None:
    check(hf_config, config)
    check_grid_for_model(hf_config, config)


class LLMQATHooks(DistillHooks):
    def finish(self, model: nn.Module) -> None:
        """Pack the trained weights into the real low-bit format."""
        with torch.no_grad():
            for path, m in decoder_linears(model):
                if isinstance(m, FakeQuantLinear):  # packed where the weight is (the model's device)
                    packed = to_quant_linear(m, m.bits, m.group_size, m.symmetric).to(m.weight.device)
                    set_module(model, path, packed)


@register(
    LLMQATConfig,
    family="distill",
    title="LLM-QAT: Data-Free Quantization Aware Training for Large Language Models",
    arxiv="2305.17888",
    needs_calibration=False,
    paper="llm-qat",
    check=check_model,
    hooks=LLMQATHooks,
)
def apply(model: torch.nn.Module, config: LLMQATConfig, calib: Any = None) -> torch.nn.Module:
    unfreeze(model, FullConfig(keep_sparsity=False))
    for path, linear in decoder_linears(model):
        set_module(model, path, FakeQuantLinear(linear, config.bits, config.group_size, config.symmetric))
    return model
