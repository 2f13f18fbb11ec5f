"""SpQR: A Sparse-Quantized Representation for Near-Lossless LLM Weight Compression.

arXiv 2306.03078 (Dettmers, Svirschevski, Egiazarian, Kuznedelev, Frantar, Ashkboos, Borzunov,
Hoefler, Alistarh; ICLR 2024).
Algorithm: GPTQ's column sweep (act-order, error fed forward through the Cholesky factor U of
H⁻¹) with three changes. (1) Very small groups (16 columns) with their own asymmetric grid,
whose scales and zeros are quantized again — to 3 bits, with an fp16 (scale, offset) per 16
rows. (2) A group's grid is fit without its likely outliers: the weights whose leaving out
lowers the group's error (w − q(w))²/U_jj² by more than the threshold τ · mean_j(Var W_j / U_jj²).
(3) Outliers — weights whose own error (w − q(w))²/U_ii² still exceeds that threshold — are
kept in fp16 in a sparse matrix and cause no error to feed forward. Average bits count all.
Differences from the reference code: the stats' second level is a min/max grid of the scales and
(continuous) zeros rather than its integer zero points; outliers are stored as corrections to
their grid value (W = grid + sparse) in CSR with 16-bit columns, not the reference's layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from efflm.calib.hessian import inverse_cholesky, mask_dead_columns
from efflm.calib.layerwise import note, run_hessian_groups
from efflm.core.errors import ConfigError
from efflm.core.fields import opt
from efflm.core.registry import register
from efflm.core.selection import ModuleSelection
from efflm.models.arch import in_features, out_features
from efflm.nn.spqr_linear import SpQRLinear


def fit(x: torch.Tensor, maxq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric min/max grid over the last dimension: (scale, zero) with x ≈ s·(q − z); the
    range always holds 0 (GPTQ's quantizer), so z stays in [0, maxq]; an all-zero row gets [−1, 1]."""
    lo, hi = x.amin(-1).clamp(max=0), x.amax(-1).clamp(min=0)
    flat = (lo == 0) & (hi == 0)
    lo, hi = torch.where(flat, -1.0, lo), torch.where(flat, 1.0, hi)
    s = (hi - lo) / maxq
    return s, -lo / s


def fake(x: torch.Tensor, s: torch.Tensor, z: torch.Tensor, maxq: int) -> torch.Tensor:
    q = torch.clamp(torch.round(x / s.clamp(min=1e-12)[..., None] + z[..., None]), 0, maxq)
    return s[..., None] * (q - z[..., None])


def robust_grid(G: torch.Tensor, d: torch.Tensor, maxq: int, thr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid of group G [rows, g] fit without its likely outliers: those whose leaving out
    lowers the row's error Σ((w − q(w))/d)² by more than ``thr`` are replaced by the row's mean."""
    g = G.shape[1]
    s, z = fit(G, maxq)
    base = (((G - fake(G, s, z, maxq)) / d) ** 2).sum(-1, keepdim=True)
    idx = torch.arange(g, device=G.device)
    others = torch.stack([torch.cat([idx[:j], idx[j + 1 :]]) for j in range(g)])  # [g, g−1]
    Gl = G[:, others]  # [rows, g, g−1]
    sl, zl = fit(Gl, maxq)
    loo = (((Gl - fake(Gl, sl, zl, maxq)) / d[others]) ** 2).sum(-1)  # [rows, g]
    likely = (base - loo) > thr
    if not likely.any():
        return s, z
    keep = (~likely).float()
    mean = (G * keep).sum(-1, keepdim=True) / keep.sum(-1, keepdim=True).clamp(min=1)
    return fit(torch.where(likely, mean, G), maxq)


def quantize_stats(v: torch.Tensor, bits: int, block: int):
    """Second level: v [rows] as ``bits``-bit codes with an fp16 (scale, offset) per ``block``
    rows; returns (codes uint8, stats [rows/block, 2], the values they decode to)."""
    vb = v.reshape(-1, block)
    lo, hi = vb.amin(-1).half(), vb.amax(-1)
    s = ((hi - lo.float()) / (2**bits - 1)).half()
    s = torch.where(s == 0, torch.ones_like(s), s)
    codes = torch.round((vb - lo.float()[:, None]) / s.float()[:, None]).clamp(0, 2**bits - 1)
    values = codes * s.float()[:, None] + lo.float()[:, None]
    return codes.to(torch.uint8).flatten(), torch.stack([s, lo], -1), values.flatten()


def spqr_quantize(W, H, bits, group, stat_bits, stat_group, tau, act_order=True, damp=0.01, block_size=128):
    """SpQR of one (stacked) weight [out, in]: a dict of the parts ``SpQRLinear.set_parts`` takes
    (codes and sparse in permuted column order), the dequantized weight, and info."""
    W = W.float().clone()
    rows, cols = W.shape
    maxq = 2**bits - 1
    H = mask_dead_columns(W, H)
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(cols, device=W.device)
    W = W[:, perm]
    U, lam = inverse_cholesky(H[perm][:, perm], damp)
    info = {"damp": lam}
    if U is None:  # no error feedback at all: SpQR's grids and outliers on the weights as they are
        U, info = torch.eye(cols, device=W.device), {"fallback": "no feedback"}
    d = torch.diag(U)
    thr = float("inf") if tau is None else tau * (W.var(dim=0) / d**2).mean().item()
    codes, sparse, E = (torch.zeros(rows, n, device=W.device) for n in (cols, cols, block_size))
    stats = {k: [] for k in ("scale_codes", "scale_stats", "zero_codes", "zero_stats")}
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        for i in range(i1, i2):
            if i % group == 0:
                s, z = robust_grid(W[:, i : i + group], d[i : i + group], maxq, thr)
                sc, ss, s = quantize_stats(s, stat_bits, stat_group)
                zc, zs, z = quantize_stats(z, stat_bits, stat_group)
                for k, v in zip(stats, (sc, ss, zc, zs)):
                    stats[k].append(v)
            w = W[:, i]
            q = torch.clamp(torch.round(w / s.clamp(min=1e-12) + z), 0, maxq)
            dq = s * (q - z)
            outlier = ((w - dq) / d[i]) ** 2 > thr
            corr = torch.where(outlier, (w - dq).half().float(), torch.zeros((), device=w.device))
            dq = dq + corr
            codes[:, i], sparse[:, i] = q, corr
            e = (w - dq) / d[i]
            W[:, i] = dq
            W[:, i + 1 : i2].addr_(e, U[i, i + 1 : i2], alpha=-1)
            E[:, i - i1] = e
        W[:, i2:] -= E[:, : i2 - i1] @ U[i1:i2, i2:]
    parts = {k: torch.stack(v) for k, v in stats.items()}
    parts |= {"codes": codes.to(torch.uint8), "perm": perm, "sparse": sparse}
    info["outliers"] = int((sparse != 0).sum())
    return parts, W[:, torch.argsort(perm)], info


@dataclass(frozen=True)
class SpQRConfig(ModuleSelection):
    """SpQR of every decoder Linear."""

    method = "spqr"
    bits: int = opt(3, "bits per weight code, 2..8")
    group_size: int = opt(16, "consecutive columns sharing one asymmetric grid per row (≥ 1; the paper: 16)")
    stat_bits: int = opt(3, "bits of the second-level codes the grids' scales and zeros are stored in, 2..8")
    stat_group: int = opt(16, "rows sharing one second-level (scale, offset) of those statistics (≥ 1)")
    outlier_threshold: float = opt(
        0.2,
        "τ (> 0): a weight whose Hessian-weighted rounding error exceeds τ × the layer's mean column "
        "sensitivity is an outlier, kept in fp16 (the paper's 0.2)",
    )
    outliers: bool = opt(True, "keep outliers in a sparse fp16 matrix and fit grids without them; false: none")
    act_order: bool = opt(True, "quantize columns in descending order of the Hessian diagonal (as gptq's)")
    dampening: float = opt(0.01, "fraction of mean(diag H) added to the Hessian's diagonal before Cholesky, in (0, 1)")
    block_size: int = opt(128, "columns per lazy-update block of the sweep; a multiple of group_size")

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 8 or not 2 <= self.stat_bits <= 8:
            raise ConfigError(f"spqr: bits and stat_bits must be in 2..8, got {self.bits}, {self.stat_bits}")
        for name in ("group_size", "stat_group", "block_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"spqr: {name} must be positive, got {getattr(self, name)}")
        if self.block_size % self.group_size:
            raise ConfigError(f"spqr: block_size {self.block_size} must be a multiple of group_size {self.group_size}")
        if not self.outlier_threshold > 0:
            raise ConfigError(f"spqr: outlier_threshold must be positive, got {self.outlier_threshold}")
        if not 0 < self.dampening < 1:
            raise ConfigError(f"spqr: dampening must be in (0, 1), got {self.dampening}")


def check(hf_config: Any, config: SpQRConfig) -> None:
    for name, width in in_features(hf_config).items():
        if width % config.group_size or width % 8:
            raise ConfigError(f"spqr: group_size {config.group_size} (and 8) must divide {name}'s {width} inputs")
    for name, width in out_features(hf_config).items():
        if width % config.stat_group or width % 8:
            raise ConfigError(f"spqr: stat_group {config.stat_group} (and 8) must divide {name}'s {width} outputs")


@register(
    SpQRConfig,
    family="quantize",
    title="SpQR: small-group GPTQ with quantized statistics and fp16 sparse outliers",
    arxiv="2306.03078",
    needs_calibration=True,
    paper="spqr",
    check=check,
    layerwise=True,
)
def apply(model: torch.nn.Module, config: SpQRConfig, calib: Any) -> torch.nn.Module:
    tau = config.outlier_threshold if config.outliers else None

    def solve(paths: list[str], linears: list, H: torch.Tensor) -> dict[str, SpQRLinear]:
        parts, _, info = spqr_quantize(
            torch.cat([lin.weight.data for lin in linears]), H, config.bits, config.group_size, config.stat_bits,
            config.stat_group, tau, config.act_order, config.dampening, config.block_size,
        )  # fmt: skip
        if info.get("fallback"):
            note(model, f"spqr: Cholesky failed for {', '.join(paths)}; quantized without error feedback")
        done, row = {}, 0
        for path, linear in zip(paths, linears):
            rows = slice(row, row + linear.out_features)
            blocks = slice(row // config.stat_group, (row + linear.out_features) // config.stat_group)
            row += linear.out_features
            sparse = parts["sparse"][rows]
            m = SpQRLinear(
                linear.in_features, linear.out_features, config.bits, config.group_size, config.stat_bits,
                config.stat_group, int((sparse.half() != 0).sum()), linear.bias is not None, linear.weight.dtype,
            )  # fmt: skip
            m.set_parts(
                parts["codes"][rows], parts["perm"], parts["scale_codes"][:, rows], parts["scale_stats"][:, blocks],
                parts["zero_codes"][:, rows], parts["zero_stats"][:, blocks], sparse,
            )  # fmt: skip
            if linear.bias is not None:
                m.bias.data.copy_(linear.bias.data)
            linear.weight.data.copy_(m.dequantize(torch.float32))  # the rest of calibration sees it
            done[path] = m
        return done

    return run_hessian_groups(model, calib, solve, desc="spqr", select=config.selects)
