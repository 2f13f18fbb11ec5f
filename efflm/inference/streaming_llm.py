"""Efficient Streaming Language Models with Attention Sinks (Xiao et al., ICLR 2024), arXiv 2309.17453.

Algorithm: keep the KV of the first ``sinks`` tokens (attention sinks: the initial tokens
soak up attention mass whatever their content) plus a rolling window of the most recent
tokens, in a cache of constant size. Positions are assigned inside the cache (keys are
stored before RoPE and rotated at their cache slot each step), so generation can run past
the model's trained context. ``sinks=0`` is the plain sliding window the paper compares to.

Differs from the reference code (mit-han-lab/streaming-llm): one static cache of exactly
``budget`` slots, written in place, instead of concatenating and slicing transformers'
dynamic cache; the window shifts by one slot per evicted token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from efflm.core.errors import ConfigError
from efflm.core.fields import opt
from efflm.core.registry import register
from efflm.inference.cache import KVCache, KVMethodConfig, set_kv_spec


class SinkCache(KVCache):
    rerotate = True
    evicts = True

    def __init__(self, *args, sinks: int):
        super().__init__(*args)
        self.sinks = sinks
        self._full = False

    def begin(self, new_valid: torch.Tensor) -> None:
        self._full = self.length + new_valid.shape[1] > self.size
        if not self._full:
            return super().begin(new_valid)
        if new_valid.shape[1] != 1:
            raise ValueError("a full sink cache takes one token per step")
        s = self.sinks
        self.valid[:, :, s:-1] = self.valid[:, :, s + 1 :].clone()
        self.valid[:, :, -1] = new_valid[:, None, 0]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        if not self._full:
            return super().update(layer, k, v)
        s = self.sinks
        for buf, new in ((self.k, k), (self.v, v)):
            buf[layer, :, :, s:-1] = buf[layer, :, :, s + 1 :].clone()
            buf[layer, :, :, -1:] = new
        mask = self.valid[:, :, None, None, :].clone()
        mask[..., -1] = True
        return self.k[layer], self.v[layer], mask

    def commit(self, t: int) -> None:
        self.length = min(self.size, self.length + t)

    def positions(self, t: int) -> torch.Tensor:
        if self.length + t > self.size:
            return torch.tensor([self.size - 1])
        return super().positions(t)


@dataclass(frozen=True)
class StreamingLLMConfig(KVMethodConfig):
    """A KV cache of ``budget`` tokens: the first ``sinks`` plus the most recent ``budget − sinks``."""

    method = "streaming_llm"
    cache = SinkCache
    budget: int = opt(512, "KV cache size in tokens (≥ sinks + 1): the sinks plus a rolling window of recent tokens")
    sinks: int = opt(4, "first tokens kept for good as attention sinks (≥ 0; 0: a plain sliding window)")

    def __post_init__(self) -> None:
        if self.sinks < 0:
            raise ConfigError(f"streaming_llm: sinks must be ≥ 0, got {self.sinks}")
        if self.budget < self.sinks + 1:
            raise ConfigError(f"streaming_llm: KV budget {self.budget} is smaller than sinks + 1 ({self.sinks + 1})")

    def slots(self, total: int) -> int:
        return min(self.budget, total)  # never more slots than the sequence can fill

    def build(self, *args) -> KVCache:
        return SinkCache(*args, sinks=self.sinks)


@register(
    StreamingLLMConfig,
    family="inference",
    title="StreamingLLM: attention sinks + recent window",
    arxiv="2309.17453",
    needs_calibration=False,
    paper="streamingllm",
)
def apply(model: Any, config: StreamingLLMConfig, calib: Any = None) -> Any:
    return set_kv_spec(model, config)
