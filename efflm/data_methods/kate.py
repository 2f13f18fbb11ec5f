"""What Makes Good In-Context Examples for GPT-3? (KATE).

arXiv 2101.06804 (Liu et al., 2021; DeeLIO workshop at ACL 2022). Algorithm: embed the training examples and the test
input with a sentence encoder; the k training examples nearest the test input (cosine
similarity) are its in-context demonstrations, ordered so the most similar sits last, next
to the test input (the paper's default; reversed order also tested there).
Differs from the paper's code: the encoder is all-MiniLM-L6-v2 when its offline package is
installed (the paper's best encoders are RoBERTa fine-tuned on NLI/STS), else TF-IDF
(``efflm.datasets.embed``); ties break towards the earlier pool example.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from efflm.core.errors import ConfigError, EfflmError
from efflm.core.fields import opt
from efflm.core.registry import MethodConfig, register
from efflm.data_methods.context import DataContext
from efflm.datasets.embed import encoder


@dataclass(frozen=True)
class KATEConfig(MethodConfig):
    """``k`` demonstrations per input by ``backend`` (auto, minilm, tfidf) similarity; ``order``:
    nearest_last (the paper) or nearest_first."""

    method = "kate"
    k: int = opt(4, "demonstrations per input (≥ 0)")
    backend: str = opt("auto", "sentence embeddings: minilm, tfidf, or auto (MiniLM where installed, else TF-IDF)")
    order: str = opt("nearest_last", "nearest_last (the paper: the most similar next to the input) or nearest_first")

    def __post_init__(self) -> None:
        if self.k < 0:
            raise ConfigError(f"kate: k must be ≥ 0, got {self.k}")
        if self.backend not in ("auto", "minilm", "tfidf"):
            raise ConfigError(f"kate: backend must be auto, minilm or tfidf, got {self.backend!r}")
        if self.order not in ("nearest_last", "nearest_first"):
            raise ConfigError(f"kate: order must be nearest_last or nearest_first, got {self.order!r}")


def nearest(queries: Sequence[str], pool: Sequence[str], k: int, backend: str = "auto") -> list[list[int]]:
    """For each query, the indices of its k most similar pool texts, most similar first."""
    enc = encoder(backend)
    enc.fit(list(pool))
    p, q = enc.encode(list(pool)), enc.encode(list(queries))
    sims = q @ p.T
    return [np.argsort(-row, kind="stable")[:k].tolist() for row in sims]


@register(
    KATEConfig,
    family="data",
    title="What Makes Good In-Context Examples for GPT-3?",
    arxiv="2101.06804",
    needs_calibration=False,
    paper="what-makes-good-context-examples-gpt",
)
def apply(queries: Sequence[str], config: KATEConfig, ctx: DataContext | None = None) -> list[list[int]]:
    """Each query's demonstrations: indices into ``ctx.pool``, in prompt order."""
    if ctx is None or not ctx.pool:
        raise EfflmError("kate needs a pool of demonstrations (--pool FILE.jsonl)")
    out = nearest(queries, ctx.pool, min(config.k, len(ctx.pool)), config.backend)
    return [row[::-1] if config.order == "nearest_last" else row for row in out]
