"""``QuantEmbedding``: embedding rows looked up in int8 codes, one fp16 scale per row.

The module of ``efflm.quantize.embedding`` (int8 embedding and lm_head). When the input
embedding is tied to the lm_head it shares that 8-bit per-channel ``QuantLinear``'s codes
(no copy), so the model stores the matrix once.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from efflm.nn.module_registry import register_module
from efflm.nn.quant_linear import QuantLinear


@register_module(role="embedding")
class QuantEmbedding(nn.Module):
    """Embedding rows from int8 codes: ``row = scale[v] · qweight[v]`` (qweight signed int8)."""

    def __init__(
        self, num_embeddings: int, embedding_dim: int, tied_to: str | None = None, dtype: torch.dtype = torch.float32
    ):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.tied_to = num_embeddings, embedding_dim, tied_to
        self.register_buffer("qweight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scales", torch.ones(num_embeddings, 1, dtype=torch.float16))
        self.compute_dtype = dtype

    @classmethod
    def from_quant_linear(cls, ql: QuantLinear, tied_to: str | None) -> "QuantEmbedding":
        """Share the codes of an 8-bit symmetric per-channel QuantLinear (no copy)."""
        if ql.layout.name != "i8" or ql.group_size != ql.in_features:
            raise ValueError("QuantEmbedding shares only 8-bit symmetric per-channel codes")
        m = cls(ql.out_features, ql.in_features, tied_to, ql.compute_dtype)
        m.qweight, m.scales = ql.qweight, ql.scales
        return m

    def spec(self) -> dict:
        return {
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "tied_to": self.tied_to,
            "dtype": str(self.compute_dtype).removeprefix("torch."),
        }

    @classmethod
    def from_spec(cls, spec: dict) -> "QuantEmbedding":
        return cls(**{**spec, "dtype": getattr(torch, spec["dtype"])})

    def set_compute_dtype(self, dtype: torch.dtype) -> None:
        self.compute_dtype = dtype

    def dequantize(self) -> torch.Tensor:
        return (self.qweight.float() * self.scales.float()).to(self.compute_dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return (self.qweight[ids].float() * self.scales[ids].float()).to(self.compute_dtype)

    def extra_repr(self) -> str:
        tied = f", tied to {self.tied_to}" if self.tied_to else ""
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 per row{tied}"
