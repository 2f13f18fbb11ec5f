"""Checkpoints whose projections are fused, read as the Llama they compute.

Phi-3 stores each layer's query, key and value projections as one ``qkv_proj`` (rows: q, then k,
then v) and the MLP's gate and up projections as one ``gate_up_proj`` (rows: gate, then up); the
rest of its layer is Llama's (RMSNorm, RoPE, SiLU-gated MLP). efflm splits the fused matrices
into Llama's ``q_proj``/``k_proj``/``v_proj`` and ``gate_proj``/``up_proj`` as the weights are read
— whole (``unfuse``) or a layer at a time from the shards (``split_names``) — so every method,
the decode engine and every export see one Llama layout, and calibration groups, scale folding and
exported tensors stay consistent. The model efflm writes is a Llama checkpoint (config
``model_type: llama``; ``efflm_unfused_from: phi3`` records the source).

GPT-2 is read the same way as the OPT it computes (``efflm.models.gpt2``).
"""

from __future__ import annotations

from typing import Any

from efflm.core.errors import EfflmError

FUSED = ("phi3", "gpt2")  # model types read as another family: Phi-3 as Llama, GPT-2 as OPT
READ_WHOLE = ("gpt2",)  # stored transposed (``Conv1D``): read whole, never layer-streamed


def llama_config(cfg: Any) -> Any:
    """The LlamaConfig of a fused family's config (same shapes, RoPE parameters and tokens)."""
    from transformers import LlamaConfig

    if cfg.model_type not in FUSED:
        return cfg
    if cfg.model_type == "gpt2":
        from efflm.models.gpt2 import opt_config

        return opt_config(cfg)
    if getattr(cfg, "partial_rotary_factor", 1.0) != 1.0:
        raise EfflmError(f"{cfg.model_type}: partial rotary embeddings ({cfg.partial_rotary_factor}) are not supported")
    heads = cfg.num_attention_heads
    out = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=heads,
        num_key_value_heads=getattr(cfg, "num_key_value_heads", None) or heads,
        head_dim=cfg.hidden_size // heads,
        hidden_act=cfg.hidden_act,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_parameters=getattr(cfg, "rope_parameters", None),
        tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
    )
    out.efflm_unfused_from = cfg.model_type
    return out


def split_names(cfg: Any) -> dict[str, tuple[str, int, int]]:
    """Llama tensor name -> (stored fused tensor, first row, end row), for every layer."""
    if cfg.model_type != "phi3":
        return {}
    hd = cfg.hidden_size // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, (getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads) * hd
    inter = cfg.intermediate_size
    out = {}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        qkv, gu = p + "self_attn.qkv_proj.weight", p + "mlp.gate_up_proj.weight"
        out[p + "self_attn.q_proj.weight"] = (qkv, 0, q)
        out[p + "self_attn.k_proj.weight"] = (qkv, q, q + kv)
        out[p + "self_attn.v_proj.weight"] = (qkv, q + kv, q + 2 * kv)
        out[p + "mlp.gate_proj.weight"] = (gu, 0, inter)
        out[p + "mlp.up_proj.weight"] = (gu, inter, 2 * inter)
    return out


def unfuse(model: Any) -> Any:
    """A loaded model of a fused family as the ``LlamaForCausalLM`` it computes (other models as they
    are); each split weight is a copy of its rows (a tensor of its own, as saving needs), and each
    fused one is freed as soon as it is split, so the model passed in is consumed."""
    from accelerate import init_empty_weights
    from transformers import LlamaForCausalLM

    cfg = model.config
    if cfg.model_type not in FUSED:
        return model
    if cfg.model_type == "gpt2":
        from efflm.models.gpt2 import to_opt

        return to_opt(model)
    dtype = next(model.parameters()).dtype
    state = model.state_dict()
    splits = split_names(cfg)
    with init_empty_weights(include_buffers=False):
        llama = LlamaForCausalLM(llama_config(cfg))
    by_stored: dict[str, list[tuple[str, int, int]]] = {}
    for name, (stored, a, b) in splits.items():
        by_stored.setdefault(stored, []).append((name, a, b))
    new = {}
    for stored, parts in by_stored.items():  # each fused tensor freed as soon as it is split: peak ≈ one model
        t = state.pop(stored)
        new.update({name: t[a:b].clone() for name, a, b in parts})  # own storage: saved alone
        owner, _, leaf = stored.rpartition(".")
        model.get_submodule(owner)._parameters[leaf] = None
        del t
    new.update(state)
    if cfg.tie_word_embeddings:
        new.pop("lm_head.weight", None)
    llama.load_state_dict(new, strict=not cfg.tie_word_embeddings, assign=True)
    if cfg.tie_word_embeddings:
        llama.tie_weights()
    return llama.to(dtype=dtype).eval()
