"""Prefix-Tuning: Optimizing Continuous Prompts for Generation (Li & Liang), arXiv 2101.00190.

Algorithm: freeze the model; give every layer n trainable key and value vectors that all
queries attend to before the real tokens (a "virtual prefix" of activations, not of input
embeddings as in prompt tuning). The paper trains them through an MLP reparameterisation for
stability and keeps only the resulting prefix.
Differs from the paper: the prefix is trained directly (peft's default,
``prefix_projection: false``); keys and values are stored in peft's layout and, as there,
the prefix takes positions 0..n−1 so the real tokens' rotary positions start at n.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from efflm.core.errors import ConfigError
from efflm.core.fields import opt
from efflm.core.registry import MethodConfig, register
from efflm.finetune.adapter import freeze_base
from efflm.models.arch import get_module, layout_for
from efflm.nn.prompts import PrefixEncoder, attach_prompt_hooks


def kv_shape(hf_config: Any) -> tuple[int, int]:
    heads = hf_config.num_attention_heads
    kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
    return kv_heads, getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads


@dataclass(frozen=True)
class PrefixTuningConfig(MethodConfig):
    """Trainable key/value prefixes in every layer."""

    method = "prefix_tuning"
    n_virtual: int = opt(16, "virtual tokens: trainable key and value vectors per layer (> 0)")
    seed: int = opt(0, "seed of their random initialization")

    def __post_init__(self) -> None:
        if self.n_virtual <= 0:
            raise ConfigError(f"prefix_tuning: n_virtual must be positive, got {self.n_virtual}")

    def peft_config(self, hf_config: Any) -> dict:
        kv_heads, head_dim = kv_shape(hf_config)
        return {
            "peft_type": "PREFIX_TUNING",
            "num_virtual_tokens": self.n_virtual,
            "token_dim": kv_heads * head_dim,
            "num_transformer_submodules": 1,
            "num_attention_heads": kv_heads,
            "num_layers": hf_config.num_hidden_layers,
            "encoder_hidden_size": kv_heads * head_dim,
            "prefix_projection": False,
        }


@register(
    PrefixTuningConfig,
    family="finetune",
    title="Prefix-Tuning: Optimizing Continuous Prompts for Generation",
    arxiv="2101.00190",
    needs_calibration=False,
    paper="prefix-tuning",
)
def apply(model: torch.nn.Module, config: PrefixTuningConfig, calib: Any = None) -> torch.nn.Module:
    freeze_base(model)
    kv_heads, head_dim = kv_shape(model.config)
    prefix = PrefixEncoder(config.n_virtual, model.config.num_hidden_layers, kv_heads, head_dim, config.seed)
    backbone = get_module(model, layout_for(model.config.model_type).layers.rsplit(".", 1)[0])
    backbone.efflm_prefix = prefix  # a submodule: its tensor is found, trained and saved with the model
    attach_prompt_hooks(backbone, None, prefix)
    return model
