"""The static KV cache (gpt-fast pattern): preallocated once, written in place, never grown.

``k``/``v`` are ``[layers, batch, kv_heads, size, head_dim]``; ``valid[b, h, s]`` says which
slots hold a real token (left padding stays invalid). A decode step calls ``update`` once per
layer with the new keys/values and gets back what to attend over plus a boolean mask
``[B, H, 1, T, S]`` (True = may attend); ``commit`` advances the cursor afterwards.

Eviction policies (H2O, StreamingLLM) and the int8 cache subclass this and override the
hooks: ``update`` (where new tokens go, what is read back), ``observe`` (attention weights,
for policies that score tokens) and ``commit``. A KV method's config (a ``KVMethodConfig``)
is what its ``apply`` leaves on ``model.config.efflm_kv_cache``; it states its slot count and
builds its cache, and ``make_cache`` asks it to.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from efflm.core.errors import ConfigError, EfflmError
from efflm.core.registry import MethodConfig, config_from_dict

KV_ATTR = "efflm_kv_cache"  # model.config attribute a registered KV method sets (saved with config.json)


class KVCache:
    needs_weights = False  # does ``observe`` want the attention weights?
    rerotate = False  # keys stored before RoPE and rotated at cache positions each step?
    evicts = False  # can a slot be reused (no rollback, no multi-token steps once full)
    fused = "fp32"  # the storage the fused decode step reads ("fp32", "int8"); None: reference path only
    storage: ClassVar[tuple[str, ...]] = ("k", "v")  # tensors [layers, batch, kv_heads, size, ...]

    def __init__(
        self,
        n_layers: int,
        batch: int,
        kv_heads: int,
        size: int,
        head_dim: int,
        dtype: torch.dtype,
        store_dtype: torch.dtype | None = None,
    ):
        shape = (n_layers, batch, kv_heads, size, head_dim)
        self.k = torch.zeros(shape, dtype=store_dtype or dtype)
        self.v = torch.zeros(shape, dtype=store_dtype or dtype)
        self.valid = torch.zeros(batch, kv_heads, size, dtype=torch.bool)
        self.size, self.length, self.dtype = size, 0, dtype
        self._mask: torch.Tensor | None = None

    # -- the hooks -------------------------------------------------------------------------
    def room(self, t: int) -> None:
        """Raise unless ``t`` more tokens fit."""
        if self.length + t > self.size:
            raise EfflmError(
                f"KV cache full: {self.length} + {t} tokens exceed its {self.size} slots "
                "(raise max_len, or use a bounded cache: streaming_llm / h2o)"
            )

    def begin(self, new_valid: torch.Tensor) -> None:
        """Before the layers run: ``new_valid [B, T]`` marks which new tokens are real."""
        t = new_valid.shape[1]
        self.room(t)
        self.valid[:, :, self.length : self.length + t] = new_valid[:, None, :]
        self._mask = None

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int) -> None:
        t = k.shape[2]
        self.k[layer, :, :, start : start + t] = k
        self.v[layer, :, :, start : start + t] = v

    def read(self, layer: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[layer, :, :, :n], self.v[layer, :, :, :n]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write ``k, v [B, H, T, D]`` after the used slots; return (K, V, mask) to attend over."""
        n = self.length + k.shape[2]
        self.store(layer, k, v, self.length)
        K, V = self.read(layer, n)
        if self._mask is None:  # the same for every layer of this step
            slots = torch.arange(n)
            query = torch.arange(self.length, n)
            causal = slots[None, :] <= query[:, None]  # [T, S]
            mask = self.valid[:, :, None, None, :n] & causal  # [B, H, 1, T, S]
            self._mask = mask | (slots[None, :] == query[:, None])  # a pad query sees itself (no NaN)
        return K, V, self._mask

    def observe(self, layer: int, weights: torch.Tensor) -> None:
        """Attention weights ``[B, H, G, T, S]`` of this step (only if ``needs_weights``)."""

    def commit(self, t: int) -> None:
        self.length += t

    def positions(self, t: int) -> torch.Tensor:
        """Cache positions of the slots the next ``t`` tokens take (for ``rerotate`` policies)."""
        return torch.arange(self.length, self.length + t)

    # -- bookkeeping -----------------------------------------------------------------------
    def truncate(self, n: int) -> None:
        """Forget every slot from ``n`` on (speculative decoding's rollback)."""
        if self.evicts:
            raise EfflmError(
                "this KV-cache policy evicts tokens and cannot roll back "
                "(speculative decoding needs the full or int8 cache)"
            )
        self.valid[:, :, n:] = False
        self.length = n

    def reset(self) -> None:
        self.valid.zero_()
        self.length = 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def tensors(self) -> list[torch.Tensor]:
        return [getattr(self, name) for name in self.storage]

    def rows(self, n: int) -> KVCache:
        """The first ``n`` sequences as a cache of their own, sharing this one's storage (a
        continuous-batching server steps only its running sequences). Its cursor starts at this
        cache's; the caller keeps the two in step. Not for policies that evict or score tokens."""
        if self.evicts or self.needs_weights or self.rerotate:
            raise EfflmError("this KV-cache policy keeps per-sequence state; it cannot be split by rows")
        view = copy.copy(self)
        for name in self.storage:
            setattr(view, name, getattr(self, name)[:, :n])
        view.valid = self.valid[:n]
        view._mask = None
        return view


@dataclass(frozen=True)
class KVMethodConfig(MethodConfig):
    """Base of a KV-cache method's config: the method states how many slots a sequence needs
    and builds its own cache; this module names no method."""

    cache: ClassVar[type[KVCache]] = KVCache  # the cache class it builds

    def slots(self, total: int) -> int:
        """Slots the cache needs for a sequence of ``total`` tokens."""
        return total

    def build(self, n_layers: int, batch: int, kv_heads: int, size: int, head_dim: int, dtype: torch.dtype) -> KVCache:
        return self.cache(n_layers, batch, kv_heads, size, head_dim, dtype)


def kv_spec(model: Any) -> dict | None:
    return getattr(model.config, KV_ATTR, None)


def set_kv_spec(model: Any, config: KVMethodConfig) -> Any:
    """What a KV method's ``apply`` does: record the policy on the config (saved with the model)."""
    old = kv_spec(model)
    if old and old["method"] != config.method:
        raise ConfigError(
            f"{config.method}: the model already uses KV-cache method {old['method']!r} "
            "(one KV-cache method per recipe)"
        )
    setattr(model.config, KV_ATTR, config.to_dict())
    return model


def kv_method(model: Any) -> KVMethodConfig | None:
    """The KV method recorded on the model's config (None: the full static cache)."""
    spec = kv_spec(model)
    if not spec:
        return None
    cfg = config_from_dict(spec)
    if not isinstance(cfg, KVMethodConfig):
        raise EfflmError(f"{spec['method']!r} in the model's config is not a KV-cache method")
    return cfg


def evicting(model: Any) -> bool:
    method = kv_method(model)
    return method is not None and method.cache.evicts


def make_cache(model: Any, batch: int, total: int, dtype: torch.dtype) -> KVCache:
    """The cache a model's generation uses: its registered KV method's, or the full static cache."""
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    method = kv_method(model)
    size = total if method is None else method.slots(total)
    args = (cfg.num_hidden_layers, batch, kv_heads, size, head_dim, dtype)
    return KVCache(*args) if method is None else method.build(*args)
