"""SqueezeLLM: Dense-and-Sparse Quantization.

arXiv 2306.07629 (Kim, Hooper, Gholami, Dong, Li, Shen, Mahoney, Keutzer; ICML 2024).
Algorithm: (1) sensitivity — the diagonal of the Fisher information, Σ over calibration
samples of (∂L/∂W)²; (2) dense-and-sparse split — a small fraction of weights (the largest in
magnitude, and the most sensitive by Fisher) is kept in fp16 in a sparse matrix; (3) per
output channel, a sensitivity-weighted k-means of the remaining weights into 2^bits
centroids: the row's non-uniform codebook, each weight stored as the index of its centroid.
Differences from the reference code: 1-D Lloyd iterations run on every row at once, from the
row's quantiles, unweighted and then weighted (not sklearn's weighted k-means++ restarts); the sparse part is
stored as the kept weights minus their codebook value, so W = table + sparse exactly; the
outlier fraction is taken by magnitude over the whole Linear, not from a per-layer range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from efflm.calib.gradients import check_grad_len, linear_gradients
from efflm.core.errors import ConfigError
from efflm.core.fields import opt
from efflm.core.progress import progress
from efflm.core.registry import MethodConfig, register
from efflm.models.arch import in_features, set_module
from efflm.nn.lut_linear import LUTLinear


def weighted_kmeans_rows(w: torch.Tensor, f: torch.Tensor, k: int, iters: int = 50) -> torch.Tensor:
    """Sorted centroids [rows, k] of a 1-D k-means of each row of ``w`` weighted by ``f`` ≥ 0.

    Lloyd from the row's quantiles, unweighted first, then weighted from there: Lloyd never
    raises its objective, so the result is never worse (weighted) than plain k-means, while
    weighted Lloyd started cold stalls where low-weight weights hold whole centroids."""
    w, f = w.float(), f.float()
    idx = ((torch.arange(k, dtype=torch.float32) + 0.5) / k * w.shape[1]).long()
    c = w.sort(dim=1).values[:, idx]
    c = lloyd(w, torch.ones_like(w), c, iters)
    return lloyd(w, f, c, iters)


def lloyd(w: torch.Tensor, f: torch.Tensor, c: torch.Tensor, iters: int) -> torch.Tensor:
    """Weighted 1-D Lloyd iterations from sorted centroids ``c`` (a centroid left empty stays)."""
    for _ in range(iters):
        a = assign(w, c)
        sums = torch.zeros_like(c).scatter_add_(1, a, f * w)
        mass = torch.zeros_like(c).scatter_add_(1, a, f)
        new = torch.where(mass > 0, sums / mass.clamp(min=1e-30), c).sort(dim=1).values
        if torch.equal(new, c):
            break
        c = new
    return c


def assign(w: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of each row's sorted centroids ``c`` for every entry of ``w``."""
    mids = (c[:, 1:] + c[:, :-1]) / 2
    w = w.float()
    a = torch.zeros(w.shape, dtype=torch.uint8 if mids.shape[1] < 256 else torch.long)
    for j in range(mids.shape[1]):  # = searchsorted(mids, w), faster for these small tables
        a += w > mids[:, j : j + 1]
    return a.long()


def sparse_mask(w: torch.Tensor, f: torch.Tensor, outliers: float, sensitive: float) -> torch.Tensor:
    """True for the weights kept in fp16: the ``outliers`` fraction largest in magnitude and
    the ``sensitive`` fraction largest in Fisher information."""
    mask = torch.zeros(w.numel(), dtype=torch.bool)
    for score, frac in ((w.abs(), outliers), (f, sensitive)):
        n = int(round(frac * w.numel()))
        if n:
            mask[score.flatten().float().topk(n).indices] = True
    return mask.reshape(w.shape)


def squeeze(w: torch.Tensor, f: torch.Tensor, bits: int, outliers: float, sensitive: float, iters: int):
    """(codes uint8, table [rows, 2^bits] fp16, sparse corrections dense or None) of ``w``."""
    keep = sparse_mask(w, f, outliers, sensitive)
    table = weighted_kmeans_rows(w, f.masked_fill(keep, 0), 2**bits, iters).half()
    codes = assign(w, table.float())
    sparse = None
    if keep.any():  # kept weights: their value minus the table's, so W = table + sparse
        sparse = torch.where(keep, w.float() - table.float().gather(1, codes), torch.zeros(()))
    return codes.to(torch.uint8), table, sparse


@dataclass(frozen=True)
class SqueezeLLMConfig(MethodConfig):
    """SqueezeLLM of every decoder Linear (the paper's dense-and-sparse 0.45%: outliers 0.40% +
    sensitive 0.05%; both 0 = dense-only)."""

    method = "squeezellm"
    bits: int = opt(3, "bits per weight code, 2..8: a codebook of 2^bits centroids per output channel")
    outliers: float = opt(
        0.004, "fraction of each Linear's weights, the largest in magnitude, kept in fp16 (sparse), in [0, 1)"
    )
    sensitive: float = opt(
        0.0005, "fraction of each Linear's weights, the most sensitive by Fisher information, kept in fp16, in [0, 1)"
    )
    iters: int = opt(50, "Lloyd (k-means) iterations of each row's codebook (≥ 1)")
    grad_len: int = opt(128, "tokens of each calibration window the Fisher information's gradients use (≥ 2)")

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 8:
            raise ConfigError(f"squeezellm: bits must be in 2..8, got {self.bits}")
        for name in ("outliers", "sensitive"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"squeezellm: {name} must be in [0, 1), got {getattr(self, name)}")
        if self.outliers + self.sensitive >= 1:
            raise ConfigError("squeezellm: outliers + sensitive must stay below 1")
        if self.iters < 1:
            raise ConfigError(f"squeezellm: iters must be at least 1, got {self.iters}")
        check_grad_len(self)


def check(hf_config: Any, config: SqueezeLLMConfig) -> None:
    for name, width in in_features(hf_config).items():
        if width % 8:
            raise ConfigError(f"squeezellm: {name}'s {width} inputs are not a multiple of 8 (code packing)")


@register(
    SqueezeLLMConfig,
    family="quantize",
    title="SqueezeLLM: Fisher-weighted non-uniform codebooks + sparse fp16 outliers",
    arxiv="2306.07629",
    needs_calibration=True,
    paper="squeezellm",
    check=check,
)
def apply(model: torch.nn.Module, config: SqueezeLLMConfig, calib: Any) -> torch.nn.Module:
    fisher = linear_gradients(model, calib, squares=True, max_len=config.grad_len, desc="squeezellm: fisher")
    for path in progress(list(fisher), desc="squeezellm"):
        linear = model.get_submodule(path)
        codes, table, sparse = squeeze(
            linear.weight.data, fisher.pop(path), config.bits, config.outliers, config.sensitive, config.iters
        )
        bias = None if linear.bias is None else linear.bias.data
        set_module(model, path, LUTLinear.from_parts(codes, table, sparse, config.bits, bias, linear.weight.dtype))
    return model
