"""GPT-2's GGUF tensors from the OPT efflm reads it as (``efflm.models.gpt2``).

llama.cpp's ``gpt2`` architecture keeps GPT-2's own storage: one ``attn_qkv`` projection (rows: q,
then k, then v), learned positions without OPT's two offset rows, LayerNorms with biases, the head
tied to the embedding. The query, key and value Linears are stacked back into ``attn_qkv`` —
block rows concatenated as they are, so a quantized model keeps its codes (q, k and v must share a
block type) — and every other tensor is renamed.
"""

from __future__ import annotations

import numpy as np
import torch

from efflm.core.errors import EfflmError
from efflm.nn.module_registry import role

_NAMES = {  # OPT module (in a layer) -> llama.cpp tensor (in block i)
    "self_attn_layer_norm": "attn_norm",
    "self_attn.out_proj": "attn_output",
    "final_layer_norm": "ffn_norm",
    "fc1": "ffn_up",
    "fc2": "ffn_down",
}


def _linear(name: str, m: torch.nn.Module):
    """(weight data, ggml type or None) of one Linear: its blocks, or its float weight in F16."""
    if role(m) == "weight_grid":
        from efflm.io.gguf_export import quant_tensor

        return quant_tensor(name, m, None)
    if role(m) is not None:
        raise EfflmError(f"GGUF export: {name} ({type(m).__name__}) is neither float nor a weight grid")
    return m.weight.detach().float().to(torch.float16).numpy(), None


def tensors(model: torch.nn.Module):
    """(gguf name, numpy data, ggml type or None) of every tensor llama.cpp's ``gpt2`` reads."""
    import gguf

    dec = model.model.decoder
    q8 = gguf.GGMLQuantizationType.Q8_0
    yield "token_embd.weight", gguf.quants.quantize(dec.embed_tokens.weight.detach().float().numpy(), q8), q8
    yield "position_embd.weight", dec.embed_positions.weight.detach().float()[2:].numpy(), None
    yield "output_norm.weight", dec.final_layer_norm.weight.detach().float().numpy(), None
    yield "output_norm.bias", dec.final_layer_norm.bias.detach().float().numpy(), None
    for i, layer in enumerate(dec.layers):
        qkv = [_linear(f"layer {i} {n}", getattr(layer.self_attn, n)) for n in ("q_proj", "k_proj", "v_proj")]
        if len({t for _, t in qkv}) != 1:
            raise EfflmError(f"GGUF export: layer {i}'s q, k and v are stored in different types (attn_qkv is one)")
        yield f"blk.{i}.attn_qkv.weight", np.concatenate([d for d, _ in qkv]), qkv[0][1]
        bias = torch.cat([getattr(layer.self_attn, n).bias.detach().float() for n in ("q_proj", "k_proj", "v_proj")])
        yield f"blk.{i}.attn_qkv.bias", bias.numpy(), None
        for ours, theirs in _NAMES.items():
            m = layer.get_submodule(ours)
            if isinstance(m, torch.nn.LayerNorm):
                yield f"blk.{i}.{theirs}.weight", m.weight.detach().float().numpy(), None
            else:
                data, qtype = _linear(f"layer {i} {ours}", m)
                yield f"blk.{i}.{theirs}.weight", data, qtype
            yield f"blk.{i}.{theirs}.bias", m.bias.detach().float().numpy(), None


def hparams(writer, cfg) -> None:
    """llama.cpp's ``gpt2`` hyperparameters from the OPT config."""
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.ffn_dim)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_layer_norm_eps(1e-5)
