"""Random demonstrations: the in-context-learning baseline KATE and contextual calibration are
measured against (both papers' tables). Each input gets k pool examples drawn uniformly without
replacement, from a generator seeded by the seed and the input's position."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from efflm.core.errors import ConfigError, EfflmError
from efflm.core.fields import opt
from efflm.core.registry import MethodConfig, register
from efflm.data_methods.context import DataContext


@dataclass(frozen=True)
class RandomDemosConfig(MethodConfig):
    """``k`` uniformly drawn demonstrations per input (``seed``)."""

    method = "random_demos"
    k: int = opt(4, "demonstrations per input, drawn without replacement (≥ 0)")
    seed: int = opt(0, "seed of the draws (each input's also depends on its position)")

    def __post_init__(self) -> None:
        if self.k < 0:
            raise ConfigError(f"random_demos: k must be ≥ 0, got {self.k}")


@register(
    RandomDemosConfig,
    family="data",
    title="Random in-context demonstrations (baseline)",
    arxiv=None,
    needs_calibration=False,
    paper="baseline-random-demonstrations",
)
def apply(queries: Sequence[str], config: RandomDemosConfig, ctx: DataContext | None = None) -> list[list[int]]:
    if ctx is None or not ctx.pool:
        raise EfflmError("random_demos needs a pool of demonstrations (--pool FILE.jsonl)")
    k = min(config.k, len(ctx.pool))
    return [np.random.default_rng([config.seed, i]).choice(len(ctx.pool), k, replace=False).tolist()
            for i in range(len(queries))]  # fmt: skip
