"""Deduplicating Training Data Makes Language Models Better.

arXiv 2107.06499 (Lee et al., 2021). Algorithm (NearDup): every document becomes the set of
its word n-grams; MinHash signatures estimate the Jaccard similarity of two sets, and
locality-sensitive hashing over bands of the signature finds the candidate pairs without
comparing all of them; a candidate whose estimated Jaccard is ≥ the threshold (0.8 in the
paper) is a near-duplicate, and one document of each cluster is kept.
Differs from google-research/deduplicate-text-datasets: MinHash and the LSH index are
datasketch's (``MinHash``, ``MinHashLSH``), the bands chosen by datasketch for the threshold;
one streaming pass, each document compared with the documents kept so far, so a cluster is
its first document (the one kept) and the documents that match it — no connected components,
which would chain dissimilar documents through intermediate ones; ``mode: exact`` removes
documents whose normalized text is equal (the paper's ExactSubstr finds repeated substrings
with a suffix array, which efflm does not do).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from efflm.core.errors import ConfigError
from efflm.core.fields import opt
from efflm.core.registry import MethodConfig, register
from efflm.data_methods.shingles import shingles, text_key


@dataclass(frozen=True)
class DedupConfig(MethodConfig):
    """``mode``: exact (normalized text) or minhash (near duplicates: estimated Jaccard of word
    ``ngram`` shingles ≥ ``threshold``, with ``num_perm`` hash permutations; the LSH index has
    ``bands`` bands of num_perm / bands rows, or with 0 the bands datasketch picks for the
    threshold)."""

    method = "dedup"
    mode: str = opt("minhash", "exact (normalized text) or minhash (near duplicates)")
    threshold: float = opt(0.8, "minhash: estimated Jaccard similarity, in (0, 1], at which two rows are duplicates")
    num_perm: int = opt(128, "minhash: hash permutations per signature, 16..4096")
    ngram: int = opt(5, "minhash: words per shingle (≥ 1)")
    seed: int = opt(1, "minhash: seed of the hash permutations")
    bands: int = opt(
        0, "minhash: LSH bands of num_perm / bands rows (must divide num_perm); 0: datasketch's choice for threshold"
    )

    def __post_init__(self) -> None:
        if self.mode not in ("exact", "minhash"):
            raise ConfigError(f"dedup: mode must be exact or minhash, got {self.mode!r}")
        if not 0 < self.threshold <= 1:
            raise ConfigError(f"dedup: threshold must be in (0, 1], got {self.threshold}")
        if not 16 <= self.num_perm <= 4096:
            raise ConfigError(f"dedup: num_perm must be in [16, 4096], got {self.num_perm}")
        if self.ngram < 1:
            raise ConfigError(f"dedup: ngram must be ≥ 1, got {self.ngram}")
        if self.bands < 0 or (self.bands and self.num_perm % self.bands):
            raise ConfigError(f"dedup: bands must be 0 or divide num_perm ({self.num_perm}), got {self.bands}")


class Deduplicator:
    """Feed texts in order with ``add``; each call returns None (kept: the first of its cluster)
    or the index of the kept text it duplicates. State grows with the kept texts (a 16-byte
    digest each, plus a MinHash signature and its LSH bands in minhash mode), never with
    their length."""

    def __init__(self, config: DedupConfig) -> None:
        self.config = config
        self.exact: dict[bytes, int] = {}
        self.count = 0
        if config.mode == "minhash":
            from datasketch import MinHash, MinHashLSH

            self._minhash = MinHash
            self._template = MinHash(num_perm=config.num_perm, seed=config.seed)
            params = (config.bands, config.num_perm // config.bands) if config.bands else None
            self.lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm, params=params)
            self.signatures: dict[int, np.ndarray] = {}

    def signature(self, text: str):
        m = self._minhash(
            num_perm=self.config.num_perm,
            seed=self.config.seed,
            permutations=self._template.permutations,
            scheme=self._template.scheme,
        )
        m.update_batch(list(shingles(text, self.config.ngram)))  # a minimum: the order does not matter
        return m

    def add(self, text: str) -> int | None:
        index, self.count = self.count, self.count + 1
        key = text_key(text)
        if key in self.exact:
            return self.exact[key]
        if self.config.mode == "minhash":
            m = self.signature(text)
            best, best_j = None, -1.0
            for cand in self.lsh.query(m):  # candidates, verified by their Jaccard estimate
                j = float(np.mean(self.signatures[cand] == m.hashvalues))
                if j >= self.config.threshold and (j > best_j or (j == best_j and cand < best)):
                    best, best_j = cand, j
            if best is not None:
                return best
            self.lsh.insert(index, m, check_duplication=False)
            self.signatures[index] = m.hashvalues.copy()
        self.exact[key] = index
        return None


@register(
    DedupConfig,
    family="data",
    title="Deduplicating Training Data Makes Language Models Better",
    arxiv="2107.06499",
    needs_calibration=False,
    paper="deduplicating-training-data-makes-language-models",
)
def apply(texts: Iterable[str], config: DedupConfig, ctx=None) -> Iterator[int | None]:
    """For each text in order: None if kept, else the index of the kept text it duplicates."""
    d = Deduplicator(config)
    for t in texts:
        yield d.add(t)
