"""H2O: Heavy-Hitter Oracle for Efficient Generative Inference of LLMs (Zhang et al., 2023), arXiv 2306.14048.

Algorithm: every cached token accumulates the attention it receives from every later query
(per layer and KV head). With a budget of B slots, keep the ``recent`` most recent tokens
and, among the rest, the heavy hitters: when a new token arrives and the cache is full,
evict the non-recent slot with the smallest accumulated score (greedy, one per step).

Differs from the reference code (FMInference/H2O, which masks a full-size attention matrix
during scoring): a real cache of B slots per layer and KV head, written in place; with
grouped-query attention a KV head's score sums the attention of all query heads in its
group; a prompt longer than the budget is fed one token at a time once the cache is full,
so prefill evicts exactly as decoding does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from efflm.core.errors import ConfigError
from efflm.core.fields import opt
from efflm.core.registry import register
from efflm.inference.cache import KVCache, KVMethodConfig, set_kv_spec


class HeavyHitterCache(KVCache):
    needs_weights = True
    evicts = True

    def __init__(self, *args, recent: int):
        super().__init__(*args)
        L, B, H, S, _ = self.k.shape
        self.recent = recent
        self.score = torch.zeros(L, B, H, S)
        self.born = torch.zeros(L, B, H, S, dtype=torch.long)
        self.lvalid = torch.zeros(L, B, H, S, dtype=torch.bool)  # which slots hold a token, per layer
        self.t = 0  # tokens seen so far
        self._full = False
        self._slot: torch.Tensor | None = None

    def begin(self, new_valid: torch.Tensor) -> None:
        self._full = self.length + new_valid.shape[1] > self.size
        if self._full and new_valid.shape[1] != 1:
            raise ValueError("a full H2O cache takes one token per step")
        if not self._full:
            super().begin(new_valid)
        self._new_valid = new_valid

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        if not self._full:
            n, t = self.length + k.shape[2], k.shape[2]
            self.lvalid[layer, :, :, :n] = self.valid[:, :, :n]
            self.born[layer, :, :, self.length : n] = torch.arange(self.t, self.t + t)
            return super().update(layer, k, v)
        # evict: among slots not in the recent window, the lowest accumulated attention
        # (empty or pad slots first); the new token takes its place
        keep = self.born[layer] > self.t - self.recent
        score = self.score[layer].masked_fill(~self.lvalid[layer], float("-inf"))
        slot = score.masked_fill(keep & self.lvalid[layer], float("inf")).argmin(-1)  # [B, H]
        idx = slot[..., None, None].expand(*slot.shape, 1, k.shape[-1])
        self.k[layer].scatter_(2, idx, k)
        self.v[layer].scatter_(2, idx, v)
        s = slot[..., None]
        self.score[layer].scatter_(2, s, torch.zeros_like(s, dtype=self.score.dtype))
        self.born[layer].scatter_(2, s, torch.full_like(s, self.t))
        self.lvalid[layer].scatter_(2, s, self._new_valid[:, None, :].expand_as(s))
        mask = self.lvalid[layer][:, :, None, None, :].clone()
        mask.scatter_(-1, s[:, :, None, None, :], True)  # the new token sees itself
        return self.k[layer], self.v[layer], mask

    def observe(self, layer: int, weights: torch.Tensor) -> None:
        acc = weights.sum(dim=(2, 3))  # [B, H, S]
        self.score[layer, :, :, : acc.shape[-1]] += acc

    def commit(self, t: int) -> None:
        self.length = min(self.size, self.length + t)
        self.t += t

    def reset(self) -> None:
        super().reset()
        self.score.zero_()
        self.lvalid.zero_()
        self.t = 0

    def tensors(self) -> list[torch.Tensor]:
        return [self.k, self.v, self.score, self.born]


@dataclass(frozen=True)
class H2OConfig(KVMethodConfig):
    """KV budget as a fraction of the sequence (≤ 1) or a number of tokens (> 1); ``recent_ratio``
    of it goes to the most recent tokens, the rest to heavy hitters (the paper splits evenly)."""

    method = "h2o"
    cache = HeavyHitterCache
    budget: float = opt(
        0.2, "KV slots per sequence: a fraction of its length in (0, 1], or a whole number of tokens above 1"
    )
    recent_ratio: float = opt(
        0.5, "share of the budget, in (0, 1), kept for the most recent tokens; the rest holds heavy hitters"
    )

    def __post_init__(self) -> None:
        if not self.budget > 0 or (self.budget > 1 and self.budget != int(self.budget)):
            raise ConfigError(
                f"h2o: budget must be a fraction in (0, 1] or a whole number of tokens, got {self.budget}"
            )
        if not 0 < self.recent_ratio < 1:
            raise ConfigError(f"h2o: recent_ratio must be in (0, 1), got {self.recent_ratio}")

    def slots(self, total: int) -> int:
        budget = math.ceil(self.budget * total) if self.budget <= 1 else int(self.budget)
        return max(2, min(total, budget))

    def build(self, *args) -> KVCache:
        return HeavyHitterCache(*args, recent=max(1, int(args[3] * self.recent_ratio)))


@register(
    H2OConfig,
    family="inference",
    title="H2O: heavy-hitter KV-cache eviction",
    arxiv="2306.14048",
    needs_calibration=False,
    paper="h2o",
)
def apply(model: Any, config: H2OConfig, calib: Any = None) -> Any:
    return set_kv_spec(model, config)
