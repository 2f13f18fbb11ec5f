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
from efflm.models.arch import in_features, module_names
from efflm.nn.act_quant_linear import ActQuantLinear
from efflm.nn.codes import dequantize, groups
from efflm.nn.quant_linear import QuantLinear
from efflm.nn.superblocks import KINDS, KQUANTS, SUPER, int_zero_point, lattice

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


def grid(
    w: torch.Tensor, bits: int, group_size: int, symmetric: bool, scales: str = "free"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-group fp16 scales [out, groups] (and offsets for asymmetric) for weight [out, in].

    ``scales``: "free" (any fp16 per group), "int_zero_point" (asymmetric offsets −s·z with an
    integer z) or a K-quant name (the super-block lattice, ``efflm.nn.superblocks``)."""
    wg = groups(w.float(), group_size)
    if scales in KQUANTS:
        return lattice(wg, KQUANTS[scales])
    if scales == "int_zero_point":
        return int_zero_point(wg, bits)
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
    s = torch.where(s == 0, 1.0, s)  # a zero scale (a lattice's empty super-block) holds only zeros
    if offsets is None:
        q = torch.round(wg / s) + 2 ** (bits - 1)
    else:
        q = torch.round((wg - offsets.float().unsqueeze(-1)) / s)
    return q.clamp_(0, 2**bits - 1).to(torch.uint8).reshape(w.shape)


def fake_quantize(w: torch.Tensor, bits: int, group_size: int, symmetric: bool, scales: str = "free") -> torch.Tensor:
    """Quantize then dequantize (same dtype as ``w``)."""
    scales, offsets = grid(w, bits, group_size, symmetric, scales)
    return dequantize(quantize(w, scales, offsets, bits, group_size), scales, offsets, bits, group_size).to(w.dtype)


def to_quant_linear(
    linear: torch.nn.Linear,
    bits: int,
    group_size: int,
    symmetric: bool,
    weight: torch.Tensor | None = None,
    act_bits: int = 0,
    scales: str = "free",
) -> QuantLinear:
    """Round ``weight`` (default: the Linear's own) onto the grid and pack it into a QuantLinear
    (an ``ActQuantLinear`` quantizing its inputs per token when ``act_bits`` > 0)."""
    w = linear.weight.data if weight is None else weight
    args = (linear.in_features, linear.out_features, bits, group_size, symmetric)
    kwargs = {"bias": linear.bias is not None, "dtype": linear.weight.dtype}
    ql = ActQuantLinear(*args, **kwargs, act_bits=act_bits) if act_bits else QuantLinear(*args, **kwargs)
    scales, offsets = grid(w, bits, group_size, symmetric, scales)
    ql.set_codes(quantize(w, scales, offsets, bits, ql.group_size), scales, offsets)
    if linear.bias is not None:
        ql.bias.data.copy_(linear.bias.data)
    return ql


SCALES_HELP = (
    "how group scales are stored: free (any fp16 scale, and offset); int_zero_point (asymmetric offsets are "
    "−scale·z for an integer z: compressed-tensors' zero points); Q4_K, Q5_K, Q6_K, Q3_K or Q2_K (llama.cpp's "
    "K-quant super-blocks: each group's scale and offset a small-integer multiple of one fp16 per 256 weights; "
    "fixes bits, group_size and symmetric, and every selected Linear's input width must be a multiple of 256)"
)


def check_grid_config(cfg: Any) -> None:
    """Shared validation of a weight-grid config (``bits``, ``group_size``, ``scales``) of rtn/gptq/awq."""
    if not 2 <= cfg.bits <= 8:
        raise ConfigError(f"{cfg.method}: bits must be in 2..8, got {cfg.bits}")
    if cfg.group_size == 0 or cfg.group_size < -1:
        raise ConfigError(f"{cfg.method}: group_size must be positive or -1 (per-channel), got {cfg.group_size}")
    kind = getattr(cfg, "scales", "free")
    if kind not in KINDS:
        raise ConfigError(f"{cfg.method}: scales must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "int_zero_point" and cfg.symmetric:
        raise ConfigError(f"{cfg.method}: scales int_zero_point is for asymmetric grids; set symmetric: false")
    kq = KQUANTS.get(kind)
    if kq and (cfg.bits, cfg.group_size, cfg.symmetric) != (kq.bits, kq.group_size, kq.symmetric):
        raise ConfigError(
            f"{cfg.method}: scales {kind} is {kq.bits}-bit, group_size {kq.group_size}, symmetric "
            f"{str(kq.symmetric).lower()}; got bits {cfg.bits}, group_size {cfg.group_size}, symmetric "
            f"{str(cfg.symmetric).lower()}"
        )


def check_grid_for_model(hf_config: Any, cfg: Any) -> None:
    """The registry's model check shared by rtn/gptq/awq: the group size must divide every input
    (a K-quant's super-block of 256, every selected Linear's input)."""
    check_group_size(cfg.method, hf_config, cfg.group_size)
    kind = getattr(cfg, "scales", "free")
    if kind in KQUANTS:
        widths = in_features(hf_config)
        chosen = [n for n in module_names(hf_config) if not hasattr(cfg, "selects") or cfg.selects(n)]
        bad = sorted(k for k, w in widths.items() if w % SUPER and any(n.endswith("." + k) for n in chosen))
        if bad:
            fits = sorted(n for n, w in widths.items() if not w % SUPER)
            raise ConfigError(
                f"{cfg.method}: scales {kind} needs input widths that are multiples of {SUPER}; "
                f"{', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not (fits: {', '.join(fits) or 'none'}; "
                "select those with targets and give the rest a legacy grid, as llama.cpp falls back to Q5_0/Q8_0)"
            )


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
