"""Prompt-side adapters: learned virtual tokens (prompt tuning), learned per-layer key/value
prefixes (prefix tuning) and LLaMA-Adapter's gated adaption prompts.

``PromptEmbedding`` replaces the input embedding and prepends its virtual tokens on a fresh
forward; ``PrefixEncoder`` holds the prefix and builds the cache a fresh forward starts from.
Both are driven by hooks on the decoder stack (``attach_prompt_hooks``) that widen the
attention mask and, for prompt tuning, strip the virtual positions from the hidden states, so
callers see logits for their own tokens only. A forward that continues a cache (decoding) is left alone.
Tensor shapes and names follow peft's files (``prompt_embeddings``, ``adaption_prompt``,
``adaption_gate``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class PromptEmbedding(nn.Module):
    """Prompt tuning (Lester et al.): ``n`` trainable embeddings prepended to every input."""

    def __init__(self, base: nn.Embedding, n_virtual: int, init: torch.Tensor | None = None, seed: int = 0):
        super().__init__()
        self.base, self.n_virtual, self.prepend = base, n_virtual, True
        if init is None:
            g = torch.Generator().manual_seed(seed)
            init = torch.randn(n_virtual, base.embedding_dim, generator=g) * base.weight.detach().float().std()
        self.prompt_embeddings = nn.Parameter(init.detach().clone().float())

    @property
    def weight(self) -> torch.Tensor:  # tied heads and generation utilities read the embedding's weight
        return self.base.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.base(ids)
        if not self.prepend:
            return e
        p = self.prompt_embeddings.to(e.dtype).unsqueeze(0).expand(e.shape[0], -1, -1)
        return torch.cat([p, e], dim=1)


class PrefixEncoder(nn.Module):
    """Prefix tuning (Li & Liang): per layer, ``n`` trainable keys and values every query attends
    to. ``prompt_embeddings [n, layers·2·kv_dim]`` (peft's layout: layer i's keys then values)."""

    def __init__(self, n_virtual: int, n_layers: int, kv_heads: int, head_dim: int, seed: int = 0):
        super().__init__()
        self.n_virtual, self.n_layers, self.kv_heads, self.head_dim = n_virtual, n_layers, kv_heads, head_dim
        g = torch.Generator().manual_seed(seed)
        self.prompt_embeddings = nn.Parameter(torch.randn(n_virtual, n_layers * 2 * kv_heads * head_dim, generator=g))

    def cache(self, batch: int, dtype: torch.dtype, config) -> object:
        from transformers import DynamicCache

        kv = self.prompt_embeddings.to(dtype).view(self.n_virtual, self.n_layers * 2, self.kv_heads, self.head_dim)
        kv = kv.permute(1, 2, 0, 3).unsqueeze(1).expand(-1, batch, -1, -1, -1)  # [2L, B, H, n, D]
        cache = DynamicCache(config=config)
        for i in range(self.n_layers):
            cache.update(kv[2 * i], kv[2 * i + 1], i)
        return cache


class AdaptedAttention(nn.Module):
    """LLaMA-Adapter: the layer's attention plus a zero-gated attention over ``adapter_len``
    learned prompt tokens, projected by the layer's own k/v/o projections (peft's formulation)."""

    def __init__(
        self,
        attn: nn.Module,
        adapter_len: int,
        n_heads: int,
        kv_heads: int,
        head_dim: int,
        seed: int = 0,
        out_proj: str = "o_proj",
    ):
        super().__init__()
        self.model, self.adapter_len, self.out_proj = attn, adapter_len, out_proj
        self.n_heads, self.kv_heads, self.head_dim = n_heads, kv_heads, head_dim
        hidden = attn.q_proj.in_features
        g = torch.Generator().manual_seed(seed)
        self.adaption_prompt = nn.Parameter(torch.empty(1, adapter_len, hidden).normal_(generator=g))
        self.adaption_gate = nn.Parameter(torch.zeros(1))

    def __getattr__(self, name: str):  # the wrapped attention's projections stay reachable by path
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["model"], name)

    def forward(self, hidden_states: torch.Tensor, position_embeddings=None, **kwargs):
        if position_embeddings is not None:  # RoPE families; learned positions (OPT) pass none
            kwargs["position_embeddings"] = position_embeddings
        out, *rest = self.model(hidden_states, **kwargs)
        B, T, _ = hidden_states.shape
        m, factor = self.model, self.n_heads // self.kv_heads
        p = self.adaption_prompt.to(hidden_states.dtype)
        k = m.k_proj(p).view(1, self.adapter_len, self.kv_heads, self.head_dim).transpose(1, 2)
        v = m.v_proj(p).view(1, self.adapter_len, self.kv_heads, self.head_dim).transpose(1, 2)
        k = k.repeat_interleave(factor, dim=1).expand(B, -1, -1, -1)
        v = v.repeat_interleave(factor, dim=1).expand(B, -1, -1, -1)
        q = m.q_proj(hidden_states).view(B, T, self.n_heads, self.head_dim)
        if getattr(m, "q_norm", None) is not None:  # Qwen3, Gemma 3: queries RMS-normed per head, as the layer's
            q = m.q_norm(q)
        q = q.transpose(1, 2)
        if position_embeddings is not None:
            cos, sin = position_embeddings
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
            q1, q2 = q.chunk(2, dim=-1)
            q = q * cos + torch.cat((-q2, q1), dim=-1) * sin
        scores = (q @ k.transpose(2, 3)) * getattr(m, "scaling", 1 / math.sqrt(self.head_dim))
        w = self.adaption_gate * F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        a = (w @ v).transpose(1, 2).reshape(B, T, -1)
        return (out + getattr(m, self.out_proj)(a), *rest)


def _past_len(kwargs: dict) -> int:
    past = kwargs.get("past_key_values")
    return 0 if past is None else past.get_seq_length()


def attach_prompt_hooks(backbone: nn.Module, embed: PromptEmbedding | None, prefix: PrefixEncoder | None) -> None:
    """Hooks on the decoder stack (``model.model``) that make virtual tokens invisible to its
    callers: a fresh forward gets the prefix cache (prefix tuning) or prepends the virtual
    tokens and strips their hidden states (prompt tuning); an attention mask is widened to
    cover them; a forward continuing a cache (decoding) only has its mask widened."""
    n = embed.n_virtual if embed is not None else prefix.n_virtual
    state = {"strip": False}

    def pre(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs["inputs_embeds"][..., 0]
        past = _past_len(kwargs)
        fresh = past == 0
        if embed is not None:
            embed.prepend = fresh
            state["strip"] = fresh
        if fresh and prefix is not None:
            kwargs["past_key_values"] = prefix.cache(ids.shape[0], next(module.parameters()).dtype, module.config)
            kwargs["use_cache"] = True
            past = n
        cp, pid = kwargs.get("cache_position"), kwargs.get("position_ids")
        if embed is not None and fresh:  # the virtual tokens take positions 0..n-1
            if cp is not None:
                kwargs["cache_position"] = torch.arange(ids.shape[1] + n, device=cp.device)
            if pid is not None:
                kwargs["position_ids"] = torch.arange(ids.shape[1] + n, device=pid.device).expand(pid.shape[0], -1)
        else:  # the cache already holds the n virtual positions
            if cp is not None:
                kwargs["cache_position"] = cp + n
            if pid is not None:
                kwargs["position_ids"] = pid + n
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() == 2:
            want = past + ids.shape[1] + (n if fresh and embed is not None else 0)
            if mask.shape[1] < want:
                kwargs["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], want - mask.shape[1]), mask], 1)
        return args, kwargs

    def post(module, args, kwargs, output):
        if state["strip"]:
            output.last_hidden_state = output.last_hidden_state[:, n:]
            state["strip"] = False
        return output

    backbone.register_forward_pre_hook(pre, with_kwargs=True)
    backbone.register_forward_hook(post, with_kwargs=True)
