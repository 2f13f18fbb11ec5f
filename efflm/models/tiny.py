"""``tiny-llama`` and ``tiny-<family>``: seeded random causal LMs with a byte-level tokenizer,
built in-process.

``tiny-llama`` has the default model's shape of architecture (GQA, tied embeddings) at a size
that runs in milliseconds and needs no file at all. ``tiny-qwen3`` and the other ``TINY_FAMILIES``
are the same size in each supported family's own transformers class (its norms, projections and
attention quirks), so every path can be tried on every family without downloading weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with no merges: every UTF-8 byte is one token."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def tiny_config(vocab_size: int = 259) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )


def tiny_llama(seed: int = 0) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    return tiny_model("tiny-llama", seed)


def _qwen3(vocab_size: int) -> Any:
    from transformers import Qwen3Config

    kw = tiny_config(vocab_size).to_dict()
    kw.pop("model_type", None)
    return Qwen3Config(**{k: v for k, v in kw.items() if k in _LLAMA_KEYS}, tie_word_embeddings=True)


# the keyword arguments every Llama-like family's config takes as LlamaConfig does
_LLAMA_KEYS = (
    "vocab_size hidden_size intermediate_size num_hidden_layers num_attention_heads num_key_value_heads head_dim "
    "max_position_embeddings bos_token_id eos_token_id pad_token_id rms_norm_eps"
).split()


def _mistral(vocab_size: int) -> Any:
    from transformers import MistralConfig

    kw = {k: v for k, v in tiny_config(vocab_size).to_dict().items() if k in _LLAMA_KEYS}
    return MistralConfig(**kw, sliding_window=4, tie_word_embeddings=True)  # every layer slides 4 tokens


def _phi3(vocab_size: int) -> Any:
    from transformers import Phi3Config

    kw = {k: v for k, v in tiny_config(vocab_size).to_dict().items() if k in _LLAMA_KEYS and k != "head_dim"}
    return Phi3Config(**kw, tie_word_embeddings=False)


def _gemma(version: int) -> Callable[[int], Any]:
    def make(vocab_size: int) -> Any:
        from transformers import Gemma2Config, Gemma3TextConfig

        kw = tiny_config(vocab_size).to_dict()
        kw = {k: v for k, v in kw.items() if k in _LLAMA_KEYS}
        # a 4-token window on the first layer and full attention on the second, so tests see both
        extra = dict(layer_types=["sliding_attention", "full_attention"], sliding_window=4, query_pre_attn_scalar=16)
        if version == 2:  # Gemma 2 soft-caps attention scores and logits
            return Gemma2Config(**kw, **extra, attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
        return Gemma3TextConfig(**kw, **extra)

    return make


def _moe(kind: str) -> Callable[[int], Any]:
    def make(vocab_size: int) -> Any:
        from transformers import MixtralConfig, Qwen2MoeConfig, Qwen3MoeConfig

        kw = {k: v for k, v in tiny_config(vocab_size).to_dict().items() if k in _LLAMA_KEYS}
        kw |= dict(num_experts_per_tok=2, tie_word_embeddings=True)
        if kind == "mixtral":  # 4 experts of the dense width
            return MixtralConfig(**kw, num_local_experts=4)
        if kind == "qwen2_moe":  # 4 experts of half the dense width and a shared expert, its output gated
            return Qwen2MoeConfig(**kw, num_experts=4, moe_intermediate_size=64, shared_expert_intermediate_size=128)
        return Qwen3MoeConfig(**kw, num_experts=4, moe_intermediate_size=64, norm_topk_prob=True)

    return make


def _opt(vocab_size: int) -> Any:
    from transformers import OPTConfig

    c = tiny_config(vocab_size)
    return OPTConfig(vocab_size=vocab_size, hidden_size=c.hidden_size, ffn_dim=c.intermediate_size,
                     num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                     word_embed_proj_dim=c.hidden_size, max_position_embeddings=1024, dropout=0.0,
                     bos_token_id=1, eos_token_id=2, pad_token_id=2)  # fmt: skip


def _gpt2(vocab_size: int) -> Any:
    from transformers import GPT2Config

    c = tiny_config(vocab_size)
    return GPT2Config(vocab_size=vocab_size, n_embd=c.hidden_size, n_inner=c.intermediate_size,
                      n_layer=c.num_hidden_layers, n_head=c.num_attention_heads, n_positions=1024,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2)  # fmt: skip


TINY_FAMILIES: dict[str, Callable[[int], Any]] = {
    "tiny-llama": tiny_config,
    "tiny-mistral": _mistral,
    "tiny-qwen3": _qwen3,
    "tiny-gemma2": _gemma(2),
    "tiny-gemma3": _gemma(3),
    "tiny-phi3": _phi3,  # loaded as the Llama it computes (efflm.models.fused)
    "tiny-mixtral": _moe("mixtral"),
    "tiny-qwen2-moe": _moe("qwen2_moe"),
    "tiny-qwen3-moe": _moe("qwen3_moe"),
    "tiny-opt": _opt,  # LayerNorm with bias, biased Linears, learned positions, a ReLU MLP
    "tiny-gpt2": _gpt2,  # loaded as the OPT it computes (efflm.models.gpt2)
}


def tiny_spec_config(spec: str, vocab_size: int | None = None) -> Any:
    """The config of a tiny spec (``tiny-llama``, ``tiny-qwen3``, ...)."""
    return TINY_FAMILIES[spec](vocab_size or len(tiny_tokenizer()))


def tiny_model(spec: str = "tiny-llama", seed: int = 0) -> tuple[Any, PreTrainedTokenizerFast]:
    """A tiny spec's model (random weights from ``seed``, the global RNG untouched) and tokenizer."""
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(tiny_spec_config(spec, len(tokenizer)))
    model.eval()
    return model, tokenizer
