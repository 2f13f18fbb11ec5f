"""Optional int8 embedding and lm_head (by default they stay in the model's float type).

No paper of its own: round-to-nearest, symmetric, one scale per row (per vocabulary entry),
the treatment llama.cpp gives the output matrix. The lm_head becomes an 8-bit per-channel
``QuantLinear`` (bf16 activations run it through ``_weight_int8pack_mm``) and the input
embedding a ``QuantEmbedding`` that looks rows up in int8 codes. When the two are tied (as in
SmolLM2, where this 576×49152 matrix is ~21% of all weights) they keep sharing one set of
codes, so the model stores it once, at a quarter of its fp32 size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from efflm.core.registry import MethodConfig, register
from efflm.nn.quant_embedding import QuantEmbedding
from efflm.quantize.grid import to_quant_linear


def _is_tied(model: nn.Module) -> bool:
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    return head is not None and getattr(head, "weight", None) is getattr(emb, "weight", False)


@dataclass(frozen=True)
class Int8EmbeddingsConfig(MethodConfig):
    """int8 (per-row, symmetric) lm_head and input embedding; tied matrices stay shared."""

    method = "int8_embeddings"


@register(
    Int8EmbeddingsConfig,
    family="quantize",
    title="int8 embedding and lm_head (round-to-nearest, per row)",
    arxiv=None,
    needs_calibration=False,
    paper="rtn",
)
def apply(model: nn.Module, config: Int8EmbeddingsConfig, calib: Any = None) -> nn.Module:
    from efflm.models.arch import layout_for, set_module

    layout = layout_for(model.config.model_type)
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if isinstance(emb, QuantEmbedding):
        return model  # already applied
    tied = _is_tied(model)
    ql = to_quant_linear(head, 8, -1, True)
    set_module(model, layout.lm_head, ql)
    if not tied:
        shell = nn.Linear(emb.embedding_dim, emb.num_embeddings, bias=False, dtype=emb.weight.dtype, device="meta")
        ql_emb = to_quant_linear(shell, 8, -1, True, weight=emb.weight.data)
        set_module(model, layout.embed, QuantEmbedding.from_quant_linear(ql_emb, None))
    else:
        set_module(model, layout.embed, QuantEmbedding.from_quant_linear(ql, layout.lm_head))
    return model
