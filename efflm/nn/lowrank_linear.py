"""``LowRankLinear``: y = B(Ax) + Sx + b — a Linear stored as two thin factors, plus (LoSparse)
an optional sparse residual S held as CSR (values, int32 column indices, int32 row pointers).

Parameters and bytes really shrink: rank·(in + out) factor entries instead of in·out, and
nnz values + nnz indices for S. The harness counts these tensors as the model's bytes.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from efflm.nn.module_registry import register_module


@register_module(role="lowrank")
class LowRankLinear(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = False,
        nnz: int = 0,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self.in_features, self.out_features, self.rank, self.nnz = in_features, out_features, rank, nnz
        self.A = nn.Parameter(torch.zeros(rank, in_features, dtype=dtype))  # [rank, in]
        self.B = nn.Parameter(torch.zeros(out_features, rank, dtype=dtype))  # [out, rank]
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype)) if bias else None
        if nnz:
            self.s_values = nn.Parameter(torch.zeros(nnz, dtype=dtype))
            self.register_buffer("s_cols", torch.zeros(nnz, dtype=torch.int32))
            self.register_buffer("s_crow", torch.zeros(out_features + 1, dtype=torch.int32))

    def spec(self) -> dict:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "rank": self.rank,
            "bias": self.bias is not None,
            "nnz": self.nnz,
            "dtype": str(self.A.dtype).removeprefix("torch."),
        }

    @classmethod
    def from_spec(cls, spec: dict) -> "LowRankLinear":
        return cls(**{**spec, "dtype": getattr(torch, spec["dtype"])})

    def set_factors(
        self, A: torch.Tensor, B: torch.Tensor, bias: torch.Tensor | None = None, sparse: torch.Tensor | None = None
    ) -> "LowRankLinear":
        """Load factors (and a dense residual whose nonzeros become S); returns self."""
        self.A.data.copy_(A)
        self.B.data.copy_(B)
        if bias is not None:
            self.bias.data.copy_(bias)
        if sparse is not None:
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                csr = sparse.to(self.A.dtype).to_sparse_csr()
            if csr.values().numel() != self.nnz:
                raise ValueError(f"sparse residual has {csr.values().numel()} nonzeros, expected {self.nnz}")
            self.s_values.data.copy_(csr.values())
            self.s_cols.copy_(csr.col_indices())
            self.s_crow.copy_(csr.crow_indices())
        return self

    def sparse_residual(self) -> torch.Tensor | None:
        if not self.nnz:
            return None
        return torch.sparse_csr_tensor(
            self.s_crow,
            self.s_cols,
            self.s_values.float(),
            (self.out_features, self.in_features),
            check_invariants=False,
        )

    def weight_estimate(self) -> torch.Tensor:
        """The dense matrix this module computes (B·A + S), float32."""
        w = self.B.float() @ self.A.float()
        s = self.sparse_residual()
        return w if s is None else w + s.to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(F.linear(x, self.A), self.B, self.bias)
        s = self.sparse_residual()
        if s is not None:  # CSR @ dense in float32 (CPU sparse kernels lack bf16)
            flat = x.reshape(-1, self.in_features).float()
            y = y + (s @ flat.t()).t().reshape(y.shape).to(y.dtype)
        return y

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, sparse_nnz={self.nnz}"
