"""The dense baseline: the model as loaded, optionally cast to another float dtype."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from efflm.core.errors import ConfigError
from efflm.core.fields import opt
from efflm.core.registry import MethodConfig, register

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class DenseConfig(MethodConfig):
    """No compression: the model as loaded, every weight in one float type."""

    method = "dense"
    dtype: str = opt(
        "float32",
        "float type every weight is cast to (and so the type the model computes in): float32, bfloat16 or "
        "float16; packed 4/8-bit kernels need bfloat16, so put it after a quantizer in a recipe",
    )

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"dense: dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")


@register(
    DenseConfig,
    family="baseline",
    title="Dense baseline (no compression)",
    arxiv=None,
    needs_calibration=False,
    paper="dense-baseline",
)
def apply(model: torch.nn.Module, config: DenseConfig, calib: Any = None) -> torch.nn.Module:
    dtype = DTYPES[config.dtype]
    for module in model.modules():
        if hasattr(module, "set_compute_dtype"):  # packed modules keep their codes and scales
            module.set_compute_dtype(dtype)
            continue
        for p in module.parameters(recurse=False):
            p.data = p.data.to(dtype)
        for name, b in module.named_buffers(recurse=False):
            # derived buffers (rotary inv_freq) stay as computed, as transformers' loaders leave them
            if b is not None and b.is_floating_point() and name not in module._non_persistent_buffers_set:
                module._buffers[name] = b.to(dtype)
    model.config.dtype = dtype
    return model
