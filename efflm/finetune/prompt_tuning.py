"""Prompt tuning: "The Power of Scale for Parameter-Efficient Prompt Tuning" (Lester et al.),
arXiv 2104.08691.

Algorithm: freeze the whole model; prepend n trainable "soft prompt" embeddings to every
input and train only them (n·d numbers). Initialising them from the embeddings of real
vocabulary tokens trains faster than random (the paper's §3.2); the gap to full tuning
closes only as models grow to billions of parameters.
Differs from the paper and peft: none in the math; init "vocab" copies the embeddings of n
token ids drawn with the seed (the paper samples from the 5,000 most frequent tokens; the
tokenizer's low ids are its most frequent merges).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from efflm.core.errors import ConfigError
from efflm.core.fields import opt
from efflm.core.registry import MethodConfig, register
from efflm.finetune.adapter import freeze_base
from efflm.models.arch import get_module, layout_for, set_module
from efflm.nn.prompts import PromptEmbedding, attach_prompt_hooks


@dataclass(frozen=True)
class PromptTuningConfig(MethodConfig):
    """A trainable soft prompt before the input."""

    method = "prompt_tuning"
    n_virtual: int = opt(20, "soft-prompt tokens prepended to every input (> 0)")
    init: str = opt("vocab", "their start: vocab (embeddings of randomly drawn real tokens) or random")
    seed: int = opt(0, "seed of the drawn tokens or random vectors")

    def __post_init__(self) -> None:
        if self.n_virtual <= 0:
            raise ConfigError(f"prompt_tuning: n_virtual must be positive, got {self.n_virtual}")
        if self.init not in ("vocab", "random"):
            raise ConfigError(f"prompt_tuning: init must be 'vocab' or 'random', got {self.init!r}")

    def peft_config(self, hf_config: Any) -> dict:
        return {
            "peft_type": "PROMPT_TUNING",
            "num_virtual_tokens": self.n_virtual,
            "token_dim": hf_config.hidden_size,
            "num_transformer_submodules": 1,
            "num_attention_heads": hf_config.num_attention_heads,
            "num_layers": hf_config.num_hidden_layers,
            "prompt_tuning_init": "RANDOM",
        }


@register(
    PromptTuningConfig,
    family="finetune",
    title="The Power of Scale for Parameter-Efficient Prompt Tuning",
    arxiv="2104.08691",
    needs_calibration=False,
    paper="prompt-tuning",
)
def apply(model: torch.nn.Module, config: PromptTuningConfig, calib: Any = None) -> torch.nn.Module:
    freeze_base(model)
    layout = layout_for(model.config.model_type)
    base = get_module(model, layout.embed)
    init = None
    if config.init == "vocab":
        g = torch.Generator().manual_seed(config.seed)
        ids = torch.randint(0, min(5000, base.num_embeddings), (config.n_virtual,), generator=g)
        init = base.weight.detach()[ids].float()
    embed = PromptEmbedding(base, config.n_virtual, init, seed=config.seed)
    set_module(model, layout.embed, embed)
    attach_prompt_hooks(get_module(model, layout.layers.rsplit(".", 1)[0]), embed, None)
    return model
