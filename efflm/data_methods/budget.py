"""Keeping a budget: the highest-scoring rows up to a fraction of the rows or a number of tokens,
returned in input order (shared by every selection method)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from efflm.core.errors import EfflmError


def rows_for_fraction(n: int, fraction: float) -> int:
    if not 0 < fraction <= 1:
        raise EfflmError(f"budget must be in (0, 1], got {fraction}")
    return max(1, round(fraction * n))


def select(scores: Sequence[float], k: int | None = None, costs: Sequence[int] | None = None,
           max_cost: int | None = None) -> list[int]:  # fmt: skip
    """Indices of the kept rows, in input order: the ``k`` best scores, or the best rows whose
    ``costs`` sum to at most ``max_cost`` (greedy by score; a row that does not fit is skipped
    and smaller ones after it may still fit). Ties keep the earlier row; nan scores come last."""
    order = sorted(
        range(len(scores)), key=lambda i: (math.isnan(scores[i]), -scores[i] if not math.isnan(scores[i]) else 0, i)
    )
    if k is not None:
        return sorted(order[:k])
    if costs is None or max_cost is None:
        raise ValueError("select needs k, or costs and max_cost")
    kept, total = [], 0
    for i in order:
        if total + costs[i] <= max_cost:
            kept.append(i)
            total += costs[i]
    return sorted(kept)
