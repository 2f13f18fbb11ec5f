"""GPT-2 read as the OPT it computes.

A GPT-2 block is OPT's pre-norm block: LayerNorm with bias, biased attention and MLP Linears,
learned absolute positions, a GELU MLP without a gate, the head tied to the embedding. Only the
storage differs: ``Conv1D`` keeps each weight transposed (``[in, out]``), the query, key and value
projections are one ``c_attn``, and the position table has no offset (OPT's starts 2 rows on).
``to_opt`` rewrites the tensors into ``OPTForCausalLM``'s names and orientation, so every method,
the decode engine and every export see one layout; the model efflm writes is an OPT checkpoint
(``efflm_unfused_from: gpt2`` records the source).
"""

from __future__ import annotations

from typing import Any

import torch

from efflm.core.errors import EfflmError


def opt_config(cfg: Any) -> Any:
    """The OPTConfig computing what a GPT2Config does; refuses in one line what OPT cannot compute."""
    from transformers import OPTConfig

    if not getattr(cfg, "scale_attn_weights", True) or getattr(cfg, "scale_attn_by_inverse_layer_idx", False):
        raise EfflmError("gpt2: attention scaled other than by 1/sqrt(head_dim) is not supported")
    if abs(cfg.layer_norm_epsilon - 1e-5) > 1e-12:
        raise EfflmError(f"gpt2: layer_norm_epsilon {cfg.layer_norm_epsilon} (OPT's LayerNorms use 1e-5)")
    out = OPTConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.n_embd,
        num_hidden_layers=cfg.n_layer,
        ffn_dim=cfg.n_inner or 4 * cfg.n_embd,
        num_attention_heads=cfg.n_head,
        max_position_embeddings=cfg.n_positions,
        do_layer_norm_before=True,
        word_embed_proj_dim=cfg.n_embd,
        activation_function=cfg.activation_function,
        enable_bias=True,
        layer_norm_elementwise_affine=True,
        tie_word_embeddings=True,
        dropout=0.0,
        attention_dropout=0.0,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id if cfg.pad_token_id is not None else cfg.eos_token_id,
    )
    out.efflm_unfused_from = "gpt2"
    return out


def opt_state(cfg: Any, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """GPT-2's state dict as OPT's (each tensor its own copy)."""
    h = cfg.n_embd
    wpe = state["transformer.wpe.weight"]
    out = {
        "model.decoder.embed_tokens.weight": state["transformer.wte.weight"].clone(),
        "model.decoder.embed_positions.weight": torch.cat([wpe.new_zeros(2, h), wpe]),
        "model.decoder.final_layer_norm.weight": state["transformer.ln_f.weight"].clone(),
        "model.decoder.final_layer_norm.bias": state["transformer.ln_f.bias"].clone(),
    }
    for i in range(cfg.n_layer):
        g, o = f"transformer.h.{i}.", f"model.decoder.layers.{i}."
        qkv_w, qkv_b = state[g + "attn.c_attn.weight"], state[g + "attn.c_attn.bias"]
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            out[o + f"self_attn.{name}.weight"] = qkv_w[:, j * h : (j + 1) * h].t().contiguous()
            out[o + f"self_attn.{name}.bias"] = qkv_b[j * h : (j + 1) * h].clone()
        pairs = {"attn.c_proj": "self_attn.out_proj", "mlp.c_fc": "fc1", "mlp.c_proj": "fc2"}
        for theirs, ours in pairs.items():
            out[o + ours + ".weight"] = state[g + theirs + ".weight"].t().contiguous()
            out[o + ours + ".bias"] = state[g + theirs + ".bias"].clone()
        for theirs, ours in {"ln_1": "self_attn_layer_norm", "ln_2": "final_layer_norm"}.items():
            out[o + ours + ".weight"] = state[g + theirs + ".weight"].clone()
            out[o + ours + ".bias"] = state[g + theirs + ".bias"].clone()
    return out


def to_opt(model: Any) -> Any:
    """A loaded ``GPT2LMHeadModel`` as the ``OPTForCausalLM`` it computes."""
    from accelerate import init_empty_weights
    from transformers import OPTForCausalLM

    cfg = model.config
    with init_empty_weights(include_buffers=False):
        opt = OPTForCausalLM(opt_config(cfg))
    opt.load_state_dict(opt_state(cfg, model.state_dict()), strict=False, assign=True)
    opt.tie_weights()
    missing = [n for n, p in opt.named_parameters() if p.is_meta]
    if missing:
        raise EfflmError(f"gpt2: tensor {missing[0]!r} has no value after conversion")
    return opt.to(dtype=next(model.parameters()).dtype).eval()
