"""Small floating-point formats as storage codes: FP8 (E4M3, E5M2) and FP4 (E2M1).

E4M3 is OCP's ``float8_e4m3fn`` (no infinities, max 448), E5M2 IEEE-like (max 57344); both
are torch dtypes, and a code is the byte of the value. E2M1 (FP4, max 6) has the 8
magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6; a code is sign·8 + magnitude index, two per byte.
Values are scaled into range by the caller; ``encode`` saturates at the format's maximum
(a float8 cast alone would give NaN or ∞) and rounds to nearest (E2M1 ties toward zero).
"""

from __future__ import annotations

import torch

E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
_E2M1_MID = (E2M1[1:] + E2M1[:-1]) / 2
FP8 = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
MAX = {"e4m3": 448.0, "e5m2": 57344.0, "e2m1": 6.0}
BITS = {"e4m3": 8, "e5m2": 8, "e2m1": 4}


def encode(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """uint8 codes of ``x`` (already scaled into the format's range) in format ``fmt``."""
    x = x.float().clamp(-MAX[fmt], MAX[fmt])
    if fmt in FP8:
        return x.to(FP8[fmt]).view(torch.uint8)
    idx = torch.bucketize(x.abs(), _E2M1_MID.to(x.device))
    return (idx + 8 * (x < 0)).to(torch.uint8)


def decode(codes: torch.Tensor, fmt: str) -> torch.Tensor:
    """float32 values of uint8 codes."""
    if fmt in FP8:
        return codes.view(FP8[fmt]).float()
    mag = E2M1.to(codes.device)[(codes & 7).long()]
    return torch.where(codes >= 8, -mag, mag)


def round_to(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """``x`` rounded onto the format (float32), for run-time activation quantization."""
    if fmt in FP8:
        return x.float().clamp(-MAX[fmt], MAX[fmt]).to(FP8[fmt]).float()
    return decode(encode(x, fmt), fmt)


def scale_for(absmax: torch.Tensor, fmt: str, pow2: bool = False) -> torch.Tensor:
    """Scale putting ``absmax`` at the format's maximum (rounded up to a power of two if ``pow2``)."""
    s = absmax.float().clamp(min=1e-12) / MAX[fmt]
    return torch.exp2(torch.ceil(torch.log2(s))) if pow2 else s


def e4m3_scales(s: torch.Tensor) -> torch.Tensor:
    """NVFP4's group scales: ``s`` (float32, > 0) rounded to E4M3 values under one power-of-two
    per-tensor scale 2^k (the largest putting every scale at most E4M3's 448), as float32 values
    e4m3 / 2^k — exactly representable in fp16 for any weight scale fp16 itself holds."""
    k = torch.floor(torch.log2(MAX["e4m3"] / s.max().clamp(min=1e-30)))
    g = torch.exp2(k)
    e = (s * g).clamp(max=MAX["e4m3"]).to(FP8["e4m3"]).float()
    e = torch.where(e == 0, 2.0**-9, e)  # E4M3's smallest subnormal: a scale is never 0
    return e / g


def global_e4m3_scale(scales: torch.Tensor) -> torch.Tensor | None:
    """The per-tensor 2^k under which every scale is an E4M3 value (``e4m3_scales``' grid), or None."""
    s = scales.float()
    g = torch.exp2(torch.floor(torch.log2(MAX["e4m3"] / s.max().clamp(min=1e-30))))
    e = s * g
    exact = torch.equal(e.clamp(max=MAX["e4m3"]).to(FP8["e4m3"]).float(), e)
    return g if exact and bool((e > 0).all()) else None


def powers_of_two(scales: torch.Tensor) -> bool:
    """Every scale is an exact power of two (an E8M0 exponent: MX formats)."""
    s = scales.float()
    return bool(torch.equal(torch.exp2(torch.log2(s).round()), s))


def fp4_kind(weight_format: str, group_size: int, act_format: str | None, pow2: bool, e4m3: bool) -> str | None:
    """Which OCP / NVIDIA FP4 block format an E2M1 grid is — "mxfp4" (groups of 32, power-of-two
    scales), "nvfp4" (groups of 16, E4M3 scales under one power of two) — or None; weights only."""
    if weight_format != "e2m1" or act_format not in ("none", None):
        return None
    if group_size == 32 and pow2:
        return "mxfp4"
    return "nvfp4" if group_size == 16 and e4m3 else None


def fp4_kind_of_config(cfg) -> str | None:
    """``fp4_kind`` of a ZeroQuant-FP config (before any work)."""
    return fp4_kind(cfg.weight_format, cfg.group_size, cfg.act_format, cfg.pow2_scales, cfg.e4m3_scales)


def fp4_kind_of_module(m) -> str | None:
    """``fp4_kind`` of an ``FPLinear``, from the scales it holds."""
    pow2 = powers_of_two(m.scales)
    return fp4_kind(m.weight_format, m.group_size, m.act_format, pow2, global_e4m3_scale(m.scales) is not None)
