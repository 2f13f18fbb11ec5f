"""efflm's decode path: prefill + token-by-token decode over a static KV cache (gpt-fast style).

The forward pass is written out here (embedding, RMSNorm, RoPE, grouped-query attention over
the cache, MLP, head) but every weight-holding module is called as the model holds it, so the
same loop runs dense fp32/bf16, packed W4/W8 (``QuantLinear``'s kernels), structured-pruned
(smaller shapes from the config) and low-rank models. Module names come from
``models.arch.Layout``. The KV cache is the model's registered KV method, if any (H2O,
StreamingLLM, int8), else the full static cache.

Queries, keys, values and the KV cache are fp32 whatever the weights' dtype (this CPU has no
bf16 arithmetic: fp32 attention measured faster); attention goes through SDPA, or is
computed explicitly where a policy scores tokens (H2O) and needs the weights; left-padded batches mask the pad slots and count positions from each
sequence's first real token, so a padded row decodes exactly as it would alone.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from efflm.inference.cache import KVCache, make_cache
from efflm.models.arch import attention_windows, decoder_layers, get_module, layout_for


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, H, T, D]`` by ``cos/sin [B, T, D]`` (the half-split convention of HF Llama)."""
    cos, sin = cos[:, None], sin[:, None]
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def rms_norm(norm: torch.nn.Module, x: torch.Tensor, offset: float = 0.0) -> torch.Tensor:
    """The model's RMSNorm module as one fused op (same math: x·rsqrt(mean x² + eps)·(offset + weight);
    Gemma's norms scale by 1 + weight)."""
    eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", 1e-6)
    return torch.nn.functional.rms_norm(x, (x.shape[-1],), norm.weight + offset if offset else norm.weight, eps)


def layer_norm(norm: torch.nn.Module, x: torch.Tensor, offset: float = 0.0) -> torch.Tensor:
    """The model's LayerNorm module (weight and bias; OPT) as one op."""
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps)


class _InlineMLP:
    """A layer whose MLP Linears sit in the layer itself (OPT: ``fc2(act(fc1(x)))``), as one callable;
    the Linears are looked up at each call, so a method that replaces them after the engine is built
    is seen."""

    def __init__(self, layer: torch.nn.Module, layout):
        self.layer, self.up, self.down = layer, layout.mlp_linears[0], layout.mlp_linears[-1]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        return get_module(layer, self.down)(layer.activation_fn(get_module(layer, self.up)(x)))


def attention(
    q: torch.Tensor,
    K: torch.Tensor,
    V: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
    need_weights: bool = False,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Grouped-query attention of ``q [B, Hq, T, D]`` over ``K, V [B, H, S, D]``. With ``need_weights``
    the mask is ``[B, H, 1, T, S]`` and the weights come back; else SDPA's ``[B, Hq, T, S]`` or None.
    ``softcap`` (Gemma 2: scores → cap · tanh(scores / cap)) needs the explicit path (``need_weights``)."""
    B, Hq, T, D = q.shape
    H = K.shape[1]
    if not need_weights and (T > 1 or mask is not None):  # torch's fused kernel; mask [B, Hq, T, S] or None
        out = torch.nn.functional.scaled_dot_product_attention(q, K, V, attn_mask=mask, scale=scale, enable_gqa=True)
        return out, None
    if not need_weights:  # one query, nothing masked: two small matmuls beat SDPA's setup (measured)
        w = ((q.reshape(B, H, Hq // H, D) @ K.transpose(-1, -2)) * scale).softmax(dim=-1)
        return (w @ V).reshape(B, Hq, 1, D), None
    qg = q.reshape(B, H, Hq // H, T, D)
    scores = (qg @ K.unsqueeze(2).transpose(-1, -2)).float() * scale  # [B, H, G, T, S]
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    w = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    out = (w.to(V.dtype) @ V.unsqueeze(2)).reshape(B, Hq, T, D)
    return out, (w if need_weights else None)


class Engine:
    """One model's decode state: ``start`` a cache, ``feed`` tokens, read logits."""

    def __init__(self, model: torch.nn.Module, compile: bool = False, fast: bool = True):
        self.model = model
        cfg = model.config
        self.layout = layout_for(cfg.model_type)
        self.layers = decoder_layers(model)
        self.embed = get_module(model, self.layout.embed)
        self.norm = get_module(model, self.layout.final_norm)
        self.head = get_module(model, self.layout.lm_head)
        self.rotary = get_module(model, self.layout.rotary) if self.layout.rotary else None
        self.positions = get_module(model, self.layout.positions) if self.layout.positions else None
        self.n_heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        attn0 = get_module(self.layers[0], self.layout.attn)
        attn0 = getattr(attn0, "model", attn0)  # LLaMA-Adapter wraps the attention
        self.scale = getattr(attn0, "scaling", self.head_dim**-0.5)
        self.dtype = self.norm.weight.dtype
        self.device = self.norm.weight.device  # where the model is: the cache and every step's tensors go there
        self.vocab = cfg.vocab_size
        self.mods = [
            (
                *(get_module(layer, n) for n in self.layout.norms),
                *(get_module(attention_of(layer, self.layout), n.split(".")[-1]) for n in self.layout.attn_linears),
                get_module(layer, self.layout.mlp) if self.layout.mlp else _InlineMLP(layer, self.layout),
                tuple(get_module(attention_of(layer, self.layout), n) for n in self.layout.qk_norms),
                tuple(get_module(layer, n) for n in self.layout.post_norms),
            )
            for layer in self.layers
        ]
        self.offset = self.layout.norm_offset
        self.norm_of = layer_norm if self.layout.layer_norm else rms_norm
        self.windows = attention_windows(cfg)
        self.types = getattr(cfg, "layer_types", None) if self.layout.rope_by_layer_type else None
        self.softcap = getattr(cfg, "attn_logit_softcapping", None)
        self.final_softcap = getattr(cfg, "final_logit_softcapping", None)
        self.prompt = prompt_adapters(model, self)
        self.cache: KVCache | None = None
        self._sdpa_memo: dict[int, tuple] = {}  # id(mask) -> (mask, SDPA's mask), this step's
        self._windows: dict[tuple, tuple] = {}  # (id(mask), window) -> (mask, windowed), this step's
        self.pos = torch.zeros(1, dtype=torch.long, device=self.device)
        self._layer = self._layer_eager
        if compile:
            self._layer = compiled(self._layer_eager)
        from efflm.inference.fast_decode import FastDecode

        # the fused C step, where the model allows (else why not, for reports)
        self.fast, self.fast_off = FastDecode.build(self) if fast and not compile else (None, "turned off")

    def start(self, batch: int, total: int) -> KVCache:
        """A fresh cache for ``batch`` sequences of up to ``total`` tokens (policies may keep fewer);
        a prompt/prefix-tuned model's virtual tokens take the first slots."""
        with self.here():
            self.cache = make_cache(self.model, batch, total + self.prompt.n_virtual, torch.float32)
            if self.cache.rerotate and self.rotary is None:
                from efflm.core.errors import EfflmError

                raise EfflmError("this model has learned absolute positions, not RoPE: a KV cache that "
                                 "re-rotates keys (streaming_llm) cannot apply")  # fmt: skip
            if any(self.windows) and (self.cache.evicts or self.cache.rerotate):
                from efflm.core.errors import EfflmError

                raise EfflmError("this model has sliding-window attention layers: a KV cache that evicts or "
                                 "re-rotates keys (streaming_llm, h2o) cannot keep their windows")  # fmt: skip
            self.pos = torch.zeros(batch, dtype=torch.long)
            self.prompt.start(self, batch)
        return self.cache

    def here(self) -> contextlib.AbstractContextManager:
        """Tensors made inside (the cache's, the KV policies' positions and masks) go to the model's
        device; on the CPU nothing changes (no device mode on the hot path)."""
        return contextlib.nullcontext() if self.device.type == "cpu" else torch.device(self.device)

    def _layer_eager(
        self,
        i: int,
        mods: tuple,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        key_rot: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        norm1, norm2, q_proj, k_proj, v_proj, o_proj, mlp, qk_norms, post_norms = mods
        B, T, _ = x.shape
        off, norm = self.offset, self.norm_of
        h = norm(norm1, x, off)
        q = q_proj(h).view(B, T, self.n_heads, self.head_dim)
        k = k_proj(h).view(B, T, self.kv_heads, self.head_dim)
        if qk_norms:  # Qwen3: each head's query and key RMS-normalized before RoPE
            q, k = norm(qk_norms[0], q, off), norm(qk_norms[1], k, off)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = v_proj(h).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2).float()
        q = q.float() if cos is None else rope(q.float(), cos, sin)  # cos None: no RoPE (learned positions)
        if key_rot is None:
            k = k.float() if cos is None else rope(k.float(), cos, sin)
        K, V, mask = self.cache.update(i, k, v)
        if key_rot is not None:  # keys kept unrotated, rotated at their cache positions now
            K = rope(K, key_rot[0][:, : K.shape[2]], key_rot[1][:, : K.shape[2]])
        if self.windows[i] is not None and K.shape[2] > self.windows[i]:  # the window cuts keys off
            mask = self._windowed(mask, self.windows[i])
        explicit = self.cache.needs_weights or self.softcap is not None
        out, w = attention(
            q, K, V, mask if explicit else self._sdpa_mask(mask, q.shape[1]), self.scale, explicit, self.softcap
        )
        if self.cache.needs_weights:
            self.cache.observe(i, w)
        if i in self.prompt.gated:  # LLaMA-Adapter: + gate · softmax(q·K_pᵀ)·V_p, through the same o_proj
            out = out + self.prompt.gated_attention(i, q, self.scale).to(out.dtype)
        a = o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim).to(x.dtype))
        if post_norms:  # Gemma: the attention's and the MLP's outputs are normed before the residual
            a = norm(post_norms[0], a, off)
        x = x + a
        m = mlp(norm(norm2, x, off))
        return x + (norm(post_norms[1], m, off) if post_norms else m)

    def _windowed(self, mask: torch.Tensor, window: int) -> torch.Tensor:
        """``mask [B, H, 1, T, S]`` less the keys ``window`` or more positions before each query; built
        once per step and window. A slot's position counts the row's real slots before it (a cache
        that neither evicts nor re-rotates), so pad slots — left padding, or the gaps a row gets
        while other rows prefill — do not count as distance."""
        key = (id(mask), window)
        if key not in self._windows:
            T, S = mask.shape[-2:]
            kpos = self.cache.valid[:, 0, :S].long().cumsum(-1)  # [B, S], 1-based; pads repeat their left neighbour
            near = (kpos[:, S - T :, None] - kpos[:, None, :]) < window  # [B, T, S]
            self._windows[key] = (mask, mask & near[:, None, None])
        return self._windows[key][1]

    def _sdpa_mask(self, mask: torch.Tensor, n_heads: int) -> torch.Tensor | None:
        """The mask in the shape SDPA takes, built once per step and mask (None when nothing is masked)."""
        hit = self._sdpa_memo.get(id(mask))
        if hit is None or hit[0] is not mask:
            B, H, _, T, S = mask.shape
            sdpa = None if bool(mask.all()) else mask.expand(B, H, n_heads // H, T, S).reshape(B, n_heads, T, S)
            hit = self._sdpa_memo[id(mask)] = (mask, sdpa)
        return hit[1]

    @torch.inference_mode()
    def step(self, ids: torch.Tensor, valid: torch.Tensor | None = None, all_logits: bool = False) -> torch.Tensor:
        """One forward of ``ids [B, T]`` (on any device: moved to the model's) through the cache;
        fp32 logits ``[B, T or 1, V]`` on the model's device."""
        ids = ids.to(self.device)
        valid = None if valid is None else valid.to(self.device)
        with self.here():
            return self._step(ids, valid, all_logits)

    def _step(self, ids: torch.Tensor, valid: torch.Tensor | None, all_logits: bool) -> torch.Tensor:
        cache = self.cache
        B, T = ids.shape
        valid = torch.ones(B, T, dtype=torch.bool) if valid is None else valid.bool()
        x = self.prompt.embed(self, ids).to(self.dtype)
        if x.shape[1] != T:  # prompt tuning's virtual tokens, prepended at the first step
            valid = torch.cat([torch.ones(B, x.shape[1] - T, dtype=torch.bool), valid], dim=1)
            T = x.shape[1]
        cache.begin(valid)
        key_rot = None
        if cache.rerotate:
            qpos = cache.positions(T)[None].expand(B, T)
            kcos, ksin = self.rotary(x.float(), torch.arange(cache.size)[None])
            key_rot = (kcos, ksin)
        else:
            qpos = (self.pos[:, None] + valid.long().cumsum(1) - 1).clamp(min=0)
        self._windows, self._sdpa_memo = {}, {}
        if self.rotary is None:  # OPT: learned absolute positions, looked up 2 rows on
            cos = sin = None
            x = x + torch.nn.functional.embedding(qpos + 2, self.positions.weight).to(x.dtype)
        elif self.types is None:
            cos, sin = self.rotary(x.float(), qpos)
        else:  # Gemma 3: local and global layers rotate with their own base
            rot = {t: self.rotary(x.float(), qpos, t) for t in set(self.types)}
        if self.fast is not None and self.fast.takes(B * T, cache):
            x = self.fast.run(x, cos, sin, cache)  # every layer in one C call
        else:
            for i in range(len(self.layers)):
                if self.types is not None:
                    cos, sin = rot[self.types[i]]
                x = self._layer(i, self.mods[i], x, cos, sin, key_rot)
        self.pos = self.pos + valid.long().sum(1)
        cache.commit(T)
        if all_logits and T != ids.shape[1]:
            x = x[:, T - ids.shape[1] :]
        x = self.norm_of(self.norm, x if all_logits else x[:, -1:], self.offset)
        logits = self.head(x).float()
        if self.final_softcap is not None:  # Gemma 2
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        return logits

    def feed(self, ids: torch.Tensor, valid: torch.Tensor | None = None, all_logits: bool = False) -> torch.Tensor:
        """``step`` in the pieces the cache allows: an evicting cache takes one chunk while it has
        free slots, then one token at a time (each eviction decided as in decoding)."""
        cache = self.cache
        if not cache.evicts or ids.shape[1] <= cache.size - cache.length:
            return self.step(ids, valid, all_logits)
        outs, t = [], 0
        while t < ids.shape[1]:
            n = max(1, min(ids.shape[1] - t, cache.size - cache.length))
            v = None if valid is None else valid[:, t : t + n]
            outs.append(self.step(ids[:, t : t + n], v, all_logits))
            t += n
        return torch.cat(outs, dim=1) if all_logits else outs[-1]

    def rollback(self, n: int) -> None:
        """Keep only the first ``n`` cached tokens (batch 1, no padding: speculative decoding)."""
        drop = self.cache.length - n
        self.cache.truncate(n)
        self.pos = self.pos - drop


def attention_of(layer: torch.nn.Module, layout) -> torch.nn.Module:
    """A layer's attention module (under LLaMA-Adapter's wrapper, the wrapped one)."""
    attn = get_module(layer, layout.attn)
    return getattr(attn, "model", attn) if hasattr(attn, "adaption_gate") else attn


class PromptAdapters:
    """The decode path's view of prompt-side adapters: virtual tokens (prompt tuning) prepended at
    the first step, a prefix (prefix tuning) written into the first cache slots at ``start``,
    and LLaMA-Adapter's gated prompt attention per layer (its keys and values are constants)."""

    def __init__(self, model: torch.nn.Module, engine: "Engine"):
        from efflm.nn.prompts import AdaptedAttention, PrefixEncoder, PromptEmbedding

        emb = engine.embed
        self.tuned = emb if isinstance(emb, PromptEmbedding) else None
        self.prefix = next((m for m in model.modules() if isinstance(m, PrefixEncoder)), None)
        self.n_virtual = self.tuned.n_virtual if self.tuned else (self.prefix.n_virtual if self.prefix else 0)
        self.gated: dict[int, tuple] = {}
        for i, layer in enumerate(engine.layers):
            a = get_module(layer, engine.layout.attn)
            if isinstance(a, AdaptedAttention):
                with torch.no_grad():
                    p = a.adaption_prompt.to(engine.dtype)
                    g = engine.n_heads // engine.kv_heads
                    k = a.model.k_proj(p).view(1, a.adapter_len, engine.kv_heads, engine.head_dim).transpose(1, 2)
                    v = a.model.v_proj(p).view(1, a.adapter_len, engine.kv_heads, engine.head_dim).transpose(1, 2)
                    k, v = k.repeat_interleave(g, dim=1).float(), v.repeat_interleave(g, dim=1).float()
                self.gated[i] = (k, v, a.adaption_gate.detach().float())
        self.first = False

    def start(self, engine: "Engine", batch: int) -> None:
        self.first = self.tuned is not None
        if self.prefix is None:
            return
        with torch.no_grad():
            kv = self.prefix.cache(batch, torch.float32, engine.model.config)
        cache = engine.cache
        cache.begin(torch.ones(batch, self.n_virtual, dtype=torch.bool))
        for i in range(len(engine.layers)):
            cache.update(i, kv.layers[i].keys.float(), kv.layers[i].values.float())
        cache.commit(self.n_virtual)
        engine.pos = engine.pos + self.n_virtual

    def embed(self, engine: "Engine", ids: torch.Tensor) -> torch.Tensor:
        if self.tuned is None:
            return engine.embed(ids)
        x = self.tuned.base(ids)
        if self.first:
            self.first = False
            p = self.tuned.prompt_embeddings.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
            x = torch.cat([p, x], dim=1)
        return x

    def gated_attention(self, i: int, q: torch.Tensor, scale: float) -> torch.Tensor:
        k, v, gate = self.gated[i]
        w = torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1) * gate
        return w @ v


def prompt_adapters(model: torch.nn.Module, engine: "Engine") -> PromptAdapters:
    return PromptAdapters(model, engine)


def compiled(fn: Any) -> Any:
    """``torch.compile`` (cold: ~40 s here). Inductor's own settings are left as they are: its
    on-disk FX-graph cache is on by default, under ``$TORCHINDUCTOR_CACHE_DIR`` (default
    ``/tmp/torchinductor_$USER``); efflm sets no process-wide environment or inductor config."""
    return torch.compile(fn, dynamic=True)
