"""LLaMA-Adapter: Efficient Fine-tuning of Language Models with Zero-init Attention
(Zhang et al.), arXiv 2303.16199.

Algorithm: in the top L layers, learn an adaption prompt of K vectors; each token's query
also attends, through the layer's own frozen key/value projections, to those K prompt
vectors, and that attention output is scaled by a learnable gate initialised at zero — so
training starts from the unchanged model and the prompt's influence grows smoothly.
Differs from the paper: the prompt's attention gets its own softmax (peft's formulation,
whose ``adaption_prompt``/``adaption_gate`` files efflm reads and writes), not one softmax
shared with the tokens; the paper's gate is per head, peft's (and this) one per layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from efflm.core.errors import ConfigError
from efflm.core.fields import opt
from efflm.core.registry import MethodConfig, register
from efflm.finetune.adapter import freeze_base
from efflm.models.arch import decoder_layers, layout_for
from efflm.nn.prompts import AdaptedAttention


@dataclass(frozen=True)
class LlamaAdapterConfig(MethodConfig):
    """Learned prompt vectors in the top layers' attention, zero-gated."""

    method = "llama_adapter"
    adapter_len: int = opt(10, "adaption prompt vectors per adapted layer (> 0)")
    adapter_layers: int = opt(8, "how many of the top decoder layers get them (> 0)")
    seed: int = opt(0, "seed of the prompts' random initialization")

    def __post_init__(self) -> None:
        if self.adapter_len <= 0 or self.adapter_layers <= 0:
            raise ConfigError(f"llama_adapter: adapter_len and adapter_layers must be positive, got {self}")

    def peft_config(self, hf_config: Any) -> dict:
        return {
            "peft_type": "ADAPTION_PROMPT",
            "adapter_len": self.adapter_len,
            "adapter_layers": self.adapter_layers,
            "target_modules": "self_attn",
        }


def check(hf_config: Any, config: LlamaAdapterConfig) -> None:
    if config.adapter_layers > hf_config.num_hidden_layers:
        raise ConfigError(
            f"llama_adapter: adapter_layers {config.adapter_layers} exceeds the model's {hf_config.num_hidden_layers}"
        )


@register(
    LlamaAdapterConfig,
    family="finetune",
    title="LLaMA-Adapter: Efficient Fine-tuning with Zero-init Attention",
    arxiv="2303.16199",
    needs_calibration=False,
    paper="llama-adapter",
    check=check,
)
def apply(model: torch.nn.Module, config: LlamaAdapterConfig, calib: Any = None) -> torch.nn.Module:
    freeze_base(model)
    layout = layout_for(model.config.model_type)
    cfg, attn, out_proj = model.config, layout.attn, layout.attn_linears[3].rsplit(".", 1)[-1]
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    layers = decoder_layers(model)
    for i in range(len(layers) - config.adapter_layers, len(layers)):
        wrapped = AdaptedAttention(
            getattr(layers[i], attn), config.adapter_len, heads, kv_heads, head_dim, config.seed * 1009 + i, out_proj
        )
        setattr(layers[i], attn, wrapped)
    return model
