"""int8 KV cache: keys and values stored as int8 with one scale per token and head.

Algorithm: for each new token and KV head, s = max|x| / 127 over the head dimension,
q = round(x / s) ∈ [−127, 127]; attention reads q·s back. Memory per cached element is one
byte plus a 2-byte scale per ``head_dim`` elements (≈ 0.53× a bf16 cache, 0.27× fp32); the
error of each element is at most s/2.

This is the simple symmetric per-token scheme (as in vLLM's fp8/int8 KV options and the
per-token key/value quantization of KIVI/KVQuant-style papers, without their per-channel
key grouping or outlier handling).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from efflm.core.registry import register
from efflm.inference.cache import KVCache, KVMethodConfig, set_kv_spec


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [..., D]`` -> (int8 codes, fp16 scale [..., 1]) with x ≈ codes · scale."""
    scale = (x.float().abs().amax(-1, keepdim=True) / 127).clamp(min=1e-8).half()
    return (x.float() / scale.float()).round().clamp(-127, 127).to(torch.int8), scale


class Int8Cache(KVCache):
    fused = "int8"  # the fused decode step dequantizes inside its attention (``nn/csrc/decode_cpu.c``)
    storage = ("k", "v", "ks", "vs")

    def __init__(self, *args):
        super().__init__(*args, store_dtype=torch.int8)
        shape = self.k.shape[:-1] + (1,)
        self.ks = torch.ones(shape, dtype=torch.float16)
        self.vs = torch.ones(shape, dtype=torch.float16)

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int) -> None:
        t = k.shape[2]
        for codes, scales, x in ((self.k, self.ks, k), (self.v, self.vs, v)):
            q, s = quantize_int8(x)
            codes[layer, :, :, start : start + t] = q
            scales[layer, :, :, start : start + t] = s

    def read(self, layer: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.k[layer, :, :, :n].to(self.dtype) * self.ks[layer, :, :, :n].to(self.dtype)
        v = self.v[layer, :, :, :n].to(self.dtype) * self.vs[layer, :, :, :n].to(self.dtype)
        return k, v


@dataclass(frozen=True)
class KVInt8Config(KVMethodConfig):
    """Store the KV cache as int8 with per-token, per-head scales."""

    method = "kv_int8"
    cache = Int8Cache


@register(
    KVInt8Config,
    family="inference",
    title="int8 KV cache (per-token, per-head scales)",
    arxiv=None,
    needs_calibration=False,
    paper="kv-int8",
)
def apply(model: Any, config: KVInt8Config, calib: Any = None) -> Any:
    return set_kv_spec(model, config)
