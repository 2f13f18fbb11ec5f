"""Automatic prefix caching (vLLM's, block-hashed): requests that share a prompt prefix reuse its KV.

A prompt is cut into blocks of ``block`` tokens; block i is named by a hash chained over every
token up to its end (blake2b of the previous name and its own tokens), so a name stands for the
whole prefix. After a prompt is prefilled, each full block's keys and values (every tensor the
KV cache stores — fp32, or int8 with its scales) are copied out under its name; a later prompt
walks its own blocks while their names are known, copies them into its cache and prefills only
the rest (always at least its last token, whose logits it samples from). Keys are stored rotated
at their positions, and a block's positions are the same in every prompt that shares it, so the
reused KV is what the prefill would have computed.

Memory is bounded (``budget_bytes``, ``efflm serve --prefix-cache-mb``): least recently used blocks
go first, and a chain is touched from its end back to its root, so a prefix's later blocks are
evicted before the blocks that lead to them. KV policies that evict or score tokens (H2O,
StreamingLLM) are served one request at a time with no prefix cache: their caches do not hold
every token of a prompt.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch

from efflm.inference.cache import KVCache


class PrefixCache:
    def __init__(self, budget_bytes: int, block: int = 32):
        self.budget, self.block = budget_bytes, block
        self.blocks: OrderedDict[bytes, list[torch.Tensor]] = OrderedDict()
        self.used = 0
        self.queries = self.query_tokens = self.hit_tokens = 0  # counters for /metrics

    def _names(self, ids: list[int], n_blocks: int, salt: bytes) -> list[bytes]:
        names, prev = [], salt
        for i in range(n_blocks):
            chunk = ids[i * self.block : (i + 1) * self.block]
            prev = hashlib.blake2b(
                prev + torch.tensor(chunk, dtype=torch.int64).numpy().tobytes(), digest_size=16
            ).digest()
            names.append(prev)
        return names

    def restore(self, ids: list[int], cache: KVCache, salt: bytes = b"") -> int:
        """Copy the longest known prefix of ``ids`` (whole blocks, never the last token) into row 0
        of the empty ``cache``; return how many tokens it holds. ``salt`` names what else the KV
        depends on (the LoRA adapter the prompt runs through)."""
        names = self._names(ids, (len(ids) - 1) // self.block, salt)
        hit = 0
        while hit < len(names) and names[hit] in self.blocks:
            hit += 1
        self.queries += 1
        self.query_tokens += len(ids)
        for i in reversed(range(hit)):  # the chain's end first: its root is the most recent
            self.blocks.move_to_end(names[i])
        n = hit * self.block
        for i in range(hit):
            a = i * self.block
            for dst, src in zip(cache.tensors(), self.blocks[names[i]]):
                dst[:, 0, :, a : a + self.block] = src
        if n:
            cache.valid[0, :, :n] = True
            cache.length = n
        self.hit_tokens += n
        return n

    def insert(self, ids: list[int], cache: KVCache, salt: bytes = b"") -> None:
        """Keep every full block of the prefilled prompt ``ids`` (row 0 of ``cache``) not kept yet."""
        names = self._names(ids, len(ids) // self.block, salt)
        for i in reversed(range(len(names))):
            if names[i] in self.blocks:
                self.blocks.move_to_end(names[i])
                continue
            a = i * self.block
            parts = [t[:, 0, :, a : a + self.block].clone() for t in cache.tensors()]
            self.blocks[names[i]] = parts
            self.used += sum(p.numel() * p.element_size() for p in parts)
        while self.used > self.budget and self.blocks:
            _, parts = self.blocks.popitem(last=False)
            self.used -= sum(p.numel() * p.element_size() for p in parts)
