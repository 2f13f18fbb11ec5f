"""Per-group weight grids: choosing scales (and offsets), rounding onto them, packing a Linear.

Shared by RTN, GPTQ, AWQ and the int8 embedding (their papers' files hold only their own
algorithm). The grid, as ``efflm.nn.codes`` decodes it:
  symmetric:  w ≈ s·(q − 2^(b−1)),  s = m / −2^(b−1), m the signed entry of largest |w|
              (all 2^b levels used; the grid of llama.cpp's Q4_0/Q8_0)
  asymmetric: w ≈ s·q + o,  s = (max − min)/(2^b − 1),  o = min  (the grid of Q4_1)
Scales and offsets are stored in fp16 and codes are computed against the stored (rounded)
scales, so dequantization is exact.
"""

from __future__ import annotations

from typing import Any

import torch

from efflm.core.errors import ConfigError
from efflm.models.arch import in_features
from efflm.nn.act_quant_linear import ActQuantLinear
from efflm.nn.codes import dequantize, groups
from efflm.nn.quant_linear import QuantLinear

__all__ = [
    "check_grid_config",
    "check_grid_for_model",
    "check_group_size",
    "dequantize",
    "fake_quantize",
    "grid",
    "quantize",
    "to_quant_linear",
]


def grid(w: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-group fp16 scales [out, groups] (and offsets for asymmetric) for weight [out, in]."""
    wg = groups(w.float(), group_size)
    if symmetric:
        idx = wg.abs().argmax(dim=-1, keepdim=True)
        m = wg.gather(-1, idx).squeeze(-1)
        scales = (m / -(2 ** (bits - 1))).half()
        return torch.where(scales == 0, torch.ones_like(scales), scales), None
    lo, hi = wg.amin(dim=-1), wg.amax(dim=-1)
    scales = ((hi - lo) / (2**bits - 1)).half()
    return torch.where(scales == 0, torch.ones_like(scales), scales), lo.half()


def quantize(
    w: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None, bits: int, group_size: int
) -> torch.Tensor:
    """Integer codes in [0, 2^bits − 1] (uint8, shape of w) on the given grid."""
    wg = groups(w.float(), group_size)
    s = scales.float().unsqueeze(-1)
    if offsets is None:
        q = torch.round(wg / s) + 2 ** (bits - 1)
    else:
        q = torch.round((wg - offsets.float().unsqueeze(-1)) / s)
    return q.clamp_(0, 2**bits - 1).to(torch.uint8).reshape(w.shape)


def fake_quantize(w: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> torch.Tensor:
    """Quantize then dequantize (same dtype as ``w``)."""
    scales, offsets = grid(w, bits, group_size, symmetric)
    return dequantize(quantize(w, scales, offsets, bits, group_size), scales, offsets, bits, group_size).to(w.dtype)


def to_quant_linear(
    linear: torch.nn.Linear,
    bits: int,
    group_size: int,
    symmetric: bool,
    weight: torch.Tensor | None = None,
    act_bits: int = 0,
) -> QuantLinear:
    """Round ``weight`` (default: the Linear's own) onto the grid and pack it into a QuantLinear
    (an ``ActQuantLinear`` quantizing its inputs per token when ``act_bits`` > 0)."""
    w = linear.weight.data if weight is None else weight
    args = (linear.in_features, linear.out_features, bits, group_size, symmetric)
    kwargs = {"bias": linear.bias is not None, "dtype": linear.weight.dtype}
    ql = ActQuantLinear(*args, **kwargs, act_bits=act_bits) if act_bits else QuantLinear(*args, **kwargs)
    scales, offsets = grid(w, bits, group_size, symmetric)
    ql.set_codes(quantize(w, scales, offsets, bits, ql.group_size), scales, offsets)
    if linear.bias is not None:
        ql.bias.data.copy_(linear.bias.data)
    return ql


def check_grid_config(cfg: Any) -> None:
    """Shared validation of a weight-grid config (``bits``, ``group_size``) of rtn/gptq/awq."""
    if not 2 <= cfg.bits <= 8:
        raise ConfigError(f"{cfg.method}: bits must be in 2..8, got {cfg.bits}")
    if cfg.group_size == 0 or cfg.group_size < -1:
        raise ConfigError(f"{cfg.method}: group_size must be positive or -1 (per-channel), got {cfg.group_size}")


def check_grid_for_model(hf_config: Any, cfg: Any) -> None:
    """The registry's model check shared by rtn/gptq/awq: the group size must divide every input."""
    check_group_size(cfg.method, hf_config, cfg.group_size)


def check_group_size(name: str, hf_config: Any, group_size: int) -> None:
    """Reject a group size that does not divide every decoder Linear's input width."""
    if group_size <= 0:
        return
    widths = in_features(hf_config)
    for linear, width in widths.items():
        if width % group_size:
            ok = [g for g in (16, 32, 64, 128, 256) if all(w % g == 0 for w in widths.values())]
            raise ConfigError(
                f"{name}: group_size {group_size} does not divide the input dimension {width} "
                f"of {linear}; valid here: {ok or 'per-channel (-1)'}"
            )
