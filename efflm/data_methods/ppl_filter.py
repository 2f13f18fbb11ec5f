"""When Less is More: Investigating Data Pruning for Pretraining LLMs at Scale (perplexity
filtering).

arXiv 2309.04564 (Marion et al., 2023). Algorithm: a reference language model scores every
text by its perplexity; the data is pruned to the texts whose perplexity falls in a chosen part
of the distribution — the lowest (the classic quality filter of CCNet-style pipelines), the
middle (the paper's best for pretraining), or the highest.
Differs from the paper: the reference model is any efflm model, compressed ones included (a
cheap scorer is the point), not a model trained for the purpose; scores are mean NLL per token
of each text's first ``max_len`` tokens (ranking by NLL is ranking by perplexity).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from efflm.core.errors import ConfigError, EfflmError
from efflm.core.fields import opt
from efflm.core.registry import MethodConfig, register
from efflm.data_methods.context import DataContext
from efflm.data_methods.lm_score import text_nll


@dataclass(frozen=True)
class PerplexityFilterConfig(MethodConfig):
    """``keep``: low, middle or high perplexity under the reference model; ``max_len`` tokens scored."""

    method = "ppl_filter"
    keep: str = opt("low", "which texts rank first by perplexity under the reference model: low, middle or high")
    max_len: int = opt(512, "tokens of each text scored, from its start (≥ 2)")

    def __post_init__(self) -> None:
        if self.keep not in ("low", "middle", "high"):
            raise ConfigError(f"ppl_filter: keep must be low, middle or high, got {self.keep!r}")
        if self.max_len < 2:
            raise ConfigError(f"ppl_filter: max_len must be ≥ 2, got {self.max_len}")


def keep_scores(nll: Sequence[float], keep: str) -> list[float]:
    """Scores whose highest values are the part of the distribution kept."""
    if keep == "low":
        return [-x for x in nll]
    if keep == "high":
        return list(nll)
    finite = [x for x in nll if not math.isnan(x)]
    mid = statistics.median(finite) if finite else 0.0
    return [-abs(x - mid) for x in nll]


@register(
    PerplexityFilterConfig,
    family="data",
    title="When Less is More: Investigating Data Pruning for Pretraining LLMs at Scale",
    arxiv="2309.04564",
    needs_calibration=False,
    paper="when-less-is-more-data-pruning",
)
def apply(texts: Sequence[str], config: PerplexityFilterConfig, ctx: DataContext | None = None) -> list[float]:
    """One score per text (keep the highest), from the reference model in ``ctx``."""
    if ctx is None or ctx.model is None:
        raise EfflmError("ppl_filter needs a reference model (--model)")
    return keep_scores(text_nll(ctx.model, ctx.tokenizer, list(texts), config.max_len), config.keep)
