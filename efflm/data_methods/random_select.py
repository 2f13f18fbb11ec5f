"""Random selection: the baseline every data-selection paper compares against (DSIR, Cherry,
LIMA's "quality over quantity" all report it). Every text gets a seeded uniform score, so a
budget keeps a uniform random subset."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from efflm.core.fields import opt
from efflm.core.registry import MethodConfig, register
from efflm.data_methods.context import DataContext


@dataclass(frozen=True)
class RandomSelectConfig(MethodConfig):
    """A uniform random subset (``seed``)."""

    method = "random_select"
    seed: int = opt(0, "seed of the uniform random scores the subset is taken by")


@register(
    RandomSelectConfig,
    family="data",
    title="Random selection (baseline)",
    arxiv=None,
    needs_calibration=False,
    paper="baseline-random-selection",
)
def apply(texts: Sequence[str], config: RandomSelectConfig, ctx: DataContext | None = None) -> list[float]:
    return np.random.default_rng(config.seed).random(len(texts)).tolist()
