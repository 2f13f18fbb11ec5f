"""Pruning masks and the settings shared by the unstructured / N:M pruners.

Magnitude, Wanda (arXiv 2306.11695) and SparseGPT (arXiv 2301.00774) differ in the score
they give each weight; turning a score into a mask — the lowest ``sparsity`` of every output
row, or all but the N highest of every M consecutive inputs — and validating those settings
is the same for all three, and lives here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from efflm.core.errors import ConfigError
from efflm.core.fields import opt
from efflm.core.selection import ModuleSelection
from efflm.models.arch import in_features


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """``"unstructured"`` -> None; ``"2:4"`` -> (2, 4): keep N of every M consecutive inputs."""
    if pattern == "unstructured":
        return None
    try:
        n, m = (int(x) for x in pattern.split(":"))
    except ValueError:
        raise ConfigError(f"pattern must be 'unstructured' or 'N:M' (e.g. '2:4'), got {pattern!r}") from None
    if not 0 < n < m:
        raise ConfigError(f"pattern {pattern}: need 0 < N < M (keep N weights of every M), got N={n}, M={m}")
    return n, m


def row_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean prune mask [out, in]: the ``int(in · sparsity)`` lowest scores of every row."""
    k = int(score.shape[1] * sparsity)
    mask = torch.zeros_like(score, dtype=torch.bool)
    if k:
        mask.scatter_(1, torch.topk(score, k, dim=1, largest=False).indices, True)
    return mask


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Boolean prune mask [out, in]: in every run of ``m`` inputs, all but the ``n`` highest scores."""
    out, cols = score.shape
    s = score.reshape(out, cols // m, m)
    mask = torch.ones_like(s, dtype=torch.bool)
    mask.scatter_(2, torch.topk(s, n, dim=2).indices, False)
    return mask.reshape(out, cols)


def prune_mask(score: torch.Tensor, sparsity: float, pattern: str) -> torch.Tensor:
    nm = parse_pattern(pattern)
    return row_mask(score, sparsity) if nm is None else nm_mask(score, *nm)


def check_sparsity_config(cfg: Any) -> None:
    """Shared validation of ``sparsity`` and ``pattern`` (magnitude, Wanda, SparseGPT)."""
    if not 0 <= cfg.sparsity < 1:
        raise ConfigError(f"{cfg.method}: sparsity must be in [0, 1), got {cfg.sparsity}")
    nm = parse_pattern(cfg.pattern)
    if nm is not None and abs(cfg.sparsity - (1 - nm[0] / nm[1])) > 1e-9:
        raise ConfigError(
            f"{cfg.method}: pattern {cfg.pattern} means sparsity {1 - nm[0] / nm[1]:g}, "
            f"got sparsity {cfg.sparsity} (set sparsity: {1 - nm[0] / nm[1]:g})"
        )


def check_sparsity_for_model(hf_config: Any, cfg: Any) -> None:
    """The registry's model check: M of an N:M pattern must divide every Linear's input width."""
    nm = parse_pattern(cfg.pattern)
    if nm is None:
        return
    for linear, width in in_features(hf_config).items():
        if width % nm[1]:
            raise ConfigError(
                f"{cfg.method}: pattern {cfg.pattern}: M={nm[1]} does not divide the input "
                f"dimension {width} of {linear}"
            )


@dataclass(frozen=True)
class SparsityConfig(ModuleSelection):
    """Shared fields of the unstructured / N:M pruners (magnitude, Wanda, SparseGPT)."""

    sparsity: float = opt(0.5, "fraction of each output row's weights zeroed, in [0, 1)")
    pattern: str = opt(
        "unstructured",
        "unstructured, or N:M (e.g. 2:4): keep N of every M consecutive inputs; sparsity must then be 1 − N/M "
        "and M must divide every input width",
    )

    def __post_init__(self) -> None:
        check_sparsity_config(self)
