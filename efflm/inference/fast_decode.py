"""The fused decode step: all decoder layers for the new tokens of every sequence in one C call
(``efflm/nn/csrc/decode_cpu.c``), instead of ~60 torch ops and Python per layer — one-token decode,
batched decode, prefill and speculative verification alike.

``FastDecode.build(engine)`` describes each layer's weights to the C code once (pointers into
the modules' own tensors: packed 4-bit blocks, int8 rows, or dense fp32/bf16 — nothing is
copied but the norm weights and biases, as fp32; served LoRA adapters' wrappers by their base, the step
taken only when no row uses an adapter). It returns None, with the reason, where the model holds anything the C step does not compute (adapters, prompt
learning, low-rank or unpacked quantized Linears, a non-SiLU MLP); ``accepts(cache)`` refuses
KV policies that evict, re-rotate or score tokens (the full cache, fp32 or int8, is computed).
It is built per ``Engine`` from the weights as they are then: change a model's weights, make a
new engine. The engine then keeps its reference path
(``Engine._layer_eager``), which tests compare this one against token for token.
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch

from efflm.core import settings
from efflm.inference.cache import KVCache
from efflm.nn import c_kernels
from efflm.nn.layouts import Q4Blocks, SignedInt8
from efflm.nn.multi_lora import MultiLoraLinear, routing_of
from efflm.nn.quant_linear import QuantLinear

DENSE_F32, DENSE_BF16, Q4, Q8 = 0, 1, 4, 8
_I, _F, _P = ctypes.c_int, ctypes.c_float, ctypes.c_void_p


class Lin(ctypes.Structure):
    _fields_ = [("kind", _I), ("N", _I), ("K", _I), ("group", _I), ("w", _P), ("s", _P), ("z", _P),
                ("half", _F), ("bias", _P)]  # fmt: skip


class Layer(ctypes.Structure):
    _fields_ = [("lin", Lin * 7), ("norm1", _P), ("norm2", _P), ("eps1", _F), ("eps2", _F)]


class Step(ctypes.Structure):
    _fields_ = [("L", _I), ("B", _I), ("T", _I), ("D", _I), ("Hq", _I), ("H", _I), ("Dh", _I), ("I", _I), ("S", _I),
                ("bf16", _I), ("scale", _F), ("x", _P), ("cos", _P), ("sin", _P), ("kc", _P), ("vc", _P),
                ("valid", _P), ("slot", _I), ("kv_int8", _I), ("ks", _P), ("vs", _P),
                ("cache_b", _I)]  # fmt: skip


class Unsupported(Exception):
    pass


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def describe(m: torch.nn.Module, dtype: torch.dtype, keep: list) -> Lin:
    """One Linear as the C step reads it (raises ``Unsupported`` for anything else). Every tensor
    it points into is appended to ``keep``: a module whose buffers are replaced later leaves the
    step reading stale but live memory, never freed memory."""
    if isinstance(m, MultiLoraLinear):  # served adapters: the step runs here only when no row uses one
        return describe(m.base, dtype, keep)
    tensors = [t for t in (*m.parameters(recurse=False), *m.buffers(recurse=False)) if t is not None]
    if any(not t.is_contiguous() for t in tensors):
        raise Unsupported(f"a {type(m).__name__} with non-contiguous tensors")
    keep += tensors
    bias = None
    if getattr(m, "bias", None) is not None:
        bias = m.bias.detach().float().contiguous()
        keep.append(bias)
    if type(m) is QuantLinear:  # not its subclasses (ActQuantLinear quantizes its inputs too)
        if m.compute_dtype != dtype:
            raise Unsupported(f"a QuantLinear computing in {m.compute_dtype} inside a {dtype} model")
        if isinstance(m.layout, Q4Blocks):
            off = getattr(m, "offsets", None)
            return Lin(Q4, m.out_features, m.in_features, m.group_size, _ptr(m.qweight), _ptr(m.scales), _ptr(off),
                       float(2 ** (m.bits - 1)), _ptr(bias))  # fmt: skip
        if isinstance(m.layout, SignedInt8) and m.layout.kernel(m, torch.empty(0, dtype=dtype)) == "q8":
            return Lin(Q8, m.out_features, m.in_features, m.in_features, _ptr(m.qweight), _ptr(m.scales), None, 0.0,
                       _ptr(bias))  # fmt: skip
        raise Unsupported(f"{m.bits}-bit weights in the {m.layout.name} layout")
    if type(m) is torch.nn.Linear and m.weight.dtype == dtype and dtype in (torch.float32, torch.bfloat16):
        kind = DENSE_F32 if dtype == torch.float32 else DENSE_BF16
        return Lin(kind, m.out_features, m.in_features, 0, _ptr(m.weight), None, None, 0.0, _ptr(bias))
    raise Unsupported(f"a {type(m).__name__} ({getattr(m, 'weight', torch.empty(0)).dtype})")


def _eps(norm: torch.nn.Module) -> float:
    return float(getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", 1e-6))


DENSE_MAX_ROWS = 16  # a dense model's longer steps (prefill) go to torch's GEMMs, faster there (measured)


class FastDecode:
    def __init__(self, engine: Any, lib: Any, layers: list, keep: list, widest: int, dense: bool = False):
        self.engine, self.lib = engine, lib
        self.max_rows = DENSE_MAX_ROWS if dense else None  # tokens per step it takes (None: any)
        self.layers = (Layer * len(layers))(*layers)
        self.keep = keep  # every tensor the structs point into
        self.widest = widest
        windows = [w for w in engine.windows if w is not None]
        self.window = min(windows) if windows else None  # past it, sliding layers take the reference path
        self.routing = routing_of(engine.model)  # served LoRA adapters: steps with adapter rows go to torch

    @classmethod
    def build(cls, engine: Any) -> "tuple[FastDecode | None, str]":
        """(the fused step, "") or (None, why the model keeps the reference path)."""
        lib = c_kernels.library() if settings.fast_decode() else None
        try:
            if not settings.fast_decode():
                raise Unsupported("turned off by EFFLM_FAST_DECODE=0")
            if engine.device.type != "cpu":
                raise Unsupported(f"the model is on {engine.device} (the fused C step reads CPU memory)")
            if lib is None or not hasattr(lib, "efflm_decode_layers"):
                raise Unsupported("no compiled kernels here (no C compiler or AVX2/FMA/F16C, or EFFLM_Q4_KERNEL=0)")
            cfg = engine.model.config
            if getattr(cfg, "hidden_act", "silu") not in ("silu", "swish"):
                raise Unsupported(f"MLP activation {cfg.hidden_act}")
            if engine.rotary is None or engine.layout.layer_norm:
                raise Unsupported(
                    "LayerNorm and learned absolute positions (OPT, GPT-2): the fused step is RMSNorm + RoPE"
                )
            if engine.softcap is not None or engine.final_softcap is not None:
                raise Unsupported("logit soft-capping (Gemma 2)")
            if engine.prompt.n_virtual or engine.prompt.gated:
                raise Unsupported("prompt-side adapters")
            if engine.head_dim > 512 or engine.head_dim % 2:
                raise Unsupported(f"head_dim {engine.head_dim}")
            keep, layers, widest, dense = [], [], 0, False
            for mods in engine.mods:
                norm1, norm2, q, k, v, o, mlp, qk_norms, post_norms = mods
                if qk_norms:
                    raise Unsupported(
                        "per-head query/key norms (Qwen3, Gemma 3): the fused step has no norm inside attention"
                    )
                if post_norms or engine.offset:
                    raise Unsupported("Gemma's norms (1 + weight, and after the attention and the MLP)")
                if hasattr(mlp, "experts"):
                    raise Unsupported("mixture-of-experts MLPs: the fused step has one MLP a layer")
                lins = [q, k, v, o] + [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
                if any(m is None for m in lins):
                    raise Unsupported(f"an MLP without gate/up/down projections ({type(mlp).__name__})")
                norms = [n.weight.detach().float().contiguous() for n in (norm1, norm2)]
                keep += norms
                described = [describe(m, engine.dtype, keep) for m in lins]
                if (
                    described[0].N != engine.n_heads * engine.head_dim
                    or described[1].N != engine.kv_heads * engine.head_dim
                ):
                    raise Unsupported("per-layer attention widths that differ from the config's")
                widest = max(widest, described[4].N)
                dense = dense or any(d.kind in (DENSE_F32, DENSE_BF16) for d in described)
                layers.append(Layer((Lin * 7)(*described), norms[0].data_ptr(), norms[1].data_ptr(), _eps(norm1),
                                    _eps(norm2)))  # fmt: skip
        except Unsupported as e:
            return None, str(e)
        return cls(engine, lib, layers, keep, widest, dense), ""

    def takes(self, rows: int, cache: KVCache) -> bool:
        """Whether a step of ``rows`` tokens (batch × new tokens) over ``cache`` runs here."""
        fits = self.window is None or cache.length + rows <= self.window  # no window cuts a key off yet
        routed = self.routing is not None and self.routing.routed()
        return (self.max_rows is None or rows <= self.max_rows) and fits and not routed and self.accepts(cache)

    @staticmethod
    def accepts(cache: KVCache) -> bool:
        """The full static cache, fp32 or int8; policies that evict, re-rotate or score tokens keep
        the reference path."""
        if cache.evicts or cache.rerotate or cache.needs_weights:
            return False
        want = {"fp32": torch.float32, "int8": torch.int8}.get(cache.fused)
        return want is not None and cache.k.dtype == want

    def run(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Every layer for ``x [B, T, D]`` from cache slot ``cache.length`` on (``begin`` already called)."""
        e = self.engine
        B, T, D = x.shape
        x32 = x.reshape(B * T, D).to(torch.float32, copy=True).contiguous()  # the C step writes into it
        cos32, sin32 = cos.reshape(B * T, -1).float().contiguous(), sin.reshape(B * T, -1).float().contiguous()
        valid = cache.valid.view(torch.uint8)
        step = Step(len(e.layers), B, T, D, e.n_heads, e.kv_heads, e.head_dim, self.widest, cache.size,
                    int(e.dtype == torch.bfloat16), float(e.scale), x32.data_ptr(), cos32.data_ptr(),
                    sin32.data_ptr(), cache.k.data_ptr(), cache.v.data_ptr(), valid.data_ptr(),
                    cache.length, int(cache.fused == "int8"), _ptr(getattr(cache, "ks", None)),
                    _ptr(getattr(cache, "vs", None)),
                    cache.k.stride(0) // cache.k.stride(1))  # fmt: skip
        self.lib.efflm_decode_layers(ctypes.addressof(self.layers), ctypes.addressof(step))
        return x32.to(e.dtype).view(B, T, D)
