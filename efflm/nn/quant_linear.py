"""``QuantLinear``: the one replacement point for a weight-only quantized ``nn.Linear``.

It holds integer codes as tightly as a byte allows plus fp16 per-group scales (and offsets
for asymmetric grids) — never a float copy of the weight. How the codes sit in memory is a
``Layout`` object (``layouts.py``), chosen from the bits and the compute dtype; files always
hold the portable layout. ``forward`` uses the layout's kernel where one applies and
otherwise dequantizes and calls ``F.linear`` (tested to agree). The harness counts these
buffers as the model's bytes.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from efflm.nn import layouts
from efflm.nn.codes import dequantize
from efflm.nn.frozen import frozen_product
from efflm.nn.module_registry import register_module


@register_module(role="weight_grid")
class QuantLinear(nn.Module):
    """Weight-only quantized Linear: ``W[o, g*G:(g+1)*G] = scale[o,g] * (q - z) (+ offset)``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        group_size: int,
        symmetric: bool,
        bias: bool = False,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if in_features % 2:
            raise ValueError("QuantLinear needs an even in_features")
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.symmetric = bits, symmetric
        self.group_size = group_size if group_size > 0 else in_features
        groups = in_features // self.group_size
        self.layout = layouts.portable(bits, symmetric)
        self.register_buffer(
            "qweight", self.layout.pack(self, torch.zeros(out_features, in_features, dtype=torch.uint8))
        )
        self.register_buffer("scales", torch.ones(out_features, groups, dtype=torch.float16))
        if not symmetric:
            self.register_buffer("offsets", torch.zeros(out_features, groups, dtype=torch.float16))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None
        self.compute_dtype = dtype
        self._relayout()

    def spec(self) -> dict:
        """Constructor arguments, saved with the model so a loader can rebuild the shell."""
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bits": self.bits,
            "group_size": self.group_size,
            "symmetric": self.symmetric,
            "bias": self.bias is not None,
            "dtype": str(self.compute_dtype).removeprefix("torch."),
        }

    @classmethod
    def from_spec(cls, spec: dict) -> "QuantLinear":
        return cls(**{**spec, "dtype": getattr(torch, spec["dtype"])})

    # --- storage ---------------------------------------------------------------------------
    def _relayout(self) -> None:
        """Move the codes into the layout the compute dtype wants (same codes either way)."""
        want = layouts.for_compute(self.bits, self.symmetric, self.group_size, self.compute_dtype, self.in_features)
        if type(want) is not type(self.layout):
            codes = self.codes()
            self.layout = want
            self.qweight = want.pack(self, codes)
        self.layout.attach(self)

    def codes(self) -> torch.Tensor:
        """uint8 codes [out, in] in [0, 2^bits − 1], whatever the storage layout."""
        return self.layout.unpack(self, self.qweight)

    def set_codes(self, q: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None) -> None:
        self.scales.copy_(scales)
        if offsets is not None:
            self.offsets.copy_(offsets)
        self.qweight = self.layout.pack(self, q.to(torch.uint8))
        self.layout.attach(self)

    def set_compute_dtype(self, dtype: torch.dtype) -> None:
        self.compute_dtype = dtype
        if self.bias is not None:
            self.bias.data = self.bias.data.to(dtype)
        self._relayout()

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if not self.layout.portable:  # files hold the portable layout
            destination[prefix + "qweight"] = layouts.portable(self.bits, self.symmetric).pack(self, self.codes())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "qweight"
        if not self.layout.portable and key in state_dict:
            codes = layouts.portable(self.bits, self.symmetric).unpack(self, state_dict[key])
            state_dict[key] = self.layout.pack(self, codes)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.layout.attach(self)

    # --- compute ---------------------------------------------------------------------------
    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        w = dequantize(self.codes(), self.scales, getattr(self, "offsets", None), self.bits, self.group_size)
        return w.to(dtype or self.compute_dtype)

    def kernel(self, x: torch.Tensor) -> str | None:
        """Name of the packed kernel this input would use, or None for the dequantize path."""
        return self.layout.kernel(self, x)

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout.kernel(self, x) is None:
            return F.linear(x, self.dequantize(x.dtype))
        return self.layout.matmul(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = frozen_product(x, self._product, self.dequantize)  # training through it keeps no float weight
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, bits={self.bits}, "
            f"group_size={self.group_size}, symmetric={self.symmetric}, layout={self.layout.name}"
        )
