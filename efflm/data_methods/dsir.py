"""Data Selection for Language Models via Importance Resampling (DSIR).

arXiv 2302.03169 (Xie et al., 2023). Algorithm: every text becomes a bag of hashed n-gram
features (unigrams and bigrams hashed into 10,000 buckets); a multinomial over the buckets is
fit to a target sample and one to the raw pool (counts plus a pseudocount); a raw text's
log importance weight is Σ over its features of log p_target(f) − log p_raw(f); k texts are
resampled without replacement with probability ∝ weight, by Gumbel top-k.
Differs from p-lambda/dsir: words are efflm's (Unicode word runs, case-folded) and hashed with
CRC-32; the selection returns scores (log weight + Gumbel noise), so the shared budget code
can also keep a token budget; ``resample: false`` keeps the top weights deterministically.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from efflm.core.errors import ConfigError, EfflmError
from efflm.core.fields import opt
from efflm.core.registry import MethodConfig, register
from efflm.data_methods.context import DataContext
from efflm.data_methods.shingles import words


@dataclass(frozen=True)
class DSIRConfig(MethodConfig):
    """``buckets`` hashed features of word 1..``ngram``-grams; ``smoothing``: the pseudocount per
    bucket; ``resample``: Gumbel top-k (the paper) or the top log weights."""

    method = "dsir"
    buckets: int = opt(10_000, "hashed features of the bag-of-n-grams models (≥ 16)")
    ngram: int = opt(2, "word 1..ngram-grams are counted: 1, 2 or 3")
    smoothing: float = opt(1.0, "pseudocount added to every bucket of both models (> 0)")
    resample: bool = opt(
        True, "importance resampling by Gumbel top-k (the paper); false: the highest log weights, deterministic"
    )
    seed: int = opt(0, "seed of the Gumbel noise")

    def __post_init__(self) -> None:
        if self.buckets < 16:
            raise ConfigError(f"dsir: buckets must be ≥ 16, got {self.buckets}")
        if not 1 <= self.ngram <= 3:
            raise ConfigError(f"dsir: ngram must be 1, 2 or 3, got {self.ngram}")
        if self.smoothing <= 0:
            raise ConfigError(f"dsir: smoothing must be > 0, got {self.smoothing}")


def features(text: str, buckets: int, ngram: int) -> np.ndarray:
    """Bucket indices of the text's word 1..ngram-grams (one entry per occurrence)."""
    w = words(text)
    grams = [" ".join(w[i : i + n]) for n in range(1, ngram + 1) for i in range(len(w) - n + 1)]
    return np.fromiter((zlib.crc32(g.encode("utf-8")) % buckets for g in grams), dtype=np.int64, count=len(grams))


def log_probs(feats: Sequence[np.ndarray], buckets: int, smoothing: float) -> np.ndarray:
    """log of the smoothed bucket distribution fit to these texts' features."""
    counts = np.full(buckets, smoothing, dtype=np.float64)
    for f in feats:
        counts += np.bincount(f, minlength=buckets)
    return np.log(counts / counts.sum())


def log_weights(texts: Sequence[str], target: Sequence[str], config: DSIRConfig) -> np.ndarray:
    """log p_target(x) − log p_raw(x) for every raw text x under the two bag-of-features models."""
    raw = [features(t, config.buckets, config.ngram) for t in texts]
    tgt = [features(t, config.buckets, config.ngram) for t in target]
    delta = log_probs(tgt, config.buckets, config.smoothing) - log_probs(raw, config.buckets, config.smoothing)
    return np.array([delta[f].sum() for f in raw])


@register(
    DSIRConfig,
    family="data",
    title="Data Selection for Language Models via Importance Resampling",
    arxiv="2302.03169",
    needs_calibration=False,
    paper="data-selection-language-models-importance-resampling",
)
def apply(texts: Sequence[str], config: DSIRConfig, ctx: DataContext | None = None) -> list[float]:
    """One score per text (keep the highest): log importance weight, plus Gumbel noise when
    resampling. The target sample comes from ``ctx.target``."""
    if ctx is None or not ctx.target:
        raise EfflmError("dsir needs a target sample (--target FILE.jsonl)")
    lw = log_weights(list(texts), ctx.target, config)
    if config.resample:
        lw = lw + np.random.default_rng(config.seed).gumbel(size=len(lw))
    return lw.tolist()
