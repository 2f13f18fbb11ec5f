"""Adapter modules: a frozen base module plus a few trainable tensors (the LoRA family, IA3).

Each wraps the module it adapts (``base``: an ``nn.Linear``, a packed ``QuantLinear``, an
``NF4Linear``, a ``LowRankLinear``…) and calls it as it is, so a 4-bit base keeps its
packed kernel for the base product. Parameter names follow peft's (``lora_A.weight``,
``lora_magnitude_vector``, ``ia3_l``, ``lora_E``) so ``efflm.finetune.peft_files`` maps them
one to one. ``dense_weight`` is the base's weight as a float matrix (DoRA's norm, merging).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from efflm.core.errors import EfflmError


def dense_weight(base: nn.Module, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The base module's weight ``[out, in]`` as a dense float tensor."""
    if isinstance(base, nn.Linear):
        return base.weight.to(dtype)
    if hasattr(base, "dequantize"):
        return base.dequantize(dtype)
    if hasattr(base, "A") and hasattr(base, "B"):  # LowRankLinear (its sparse residual included)
        eye = torch.eye(base.in_features, dtype=base.A.dtype, device=base.A.device)
        return (base(eye) - (base.bias if base.bias is not None else 0)).T.to(dtype)
    raise EfflmError(f"{type(base).__name__} has no dense weight to adapt or merge into")


def dims(base: nn.Module) -> tuple[int, int]:
    return base.in_features, base.out_features


class LoraLinear(nn.Module):
    """``y = base(x) + (α/r)·B·A·dropout(x)`` (LoRA), optionally DoRA-normalized:
    ``y = m ⊙ (W + (α/r)BA)x / ‖W + (α/r)BA‖_row`` with the norm detached (DoRA §4.3).

    ``rank`` < r uses the nested first ``rank`` rows of A and columns of B at scale α/rank
    (DyLoRA's truncation); ``train_a=False`` freezes A at its random init (LoRA-FA).
    """

    def __init__(
        self,
        base: nn.Module,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        dora: bool = False,
        train_a: bool = True,
        seed: int = 0,
    ):
        super().__init__()
        n_in, n_out = dims(base)
        self.base, self.r, self.alpha, self.rank = base, r, float(alpha), r
        self.lora_A = nn.Linear(n_in, r, bias=False)
        self.lora_B = nn.Linear(r, n_out, bias=False)
        g = torch.Generator().manual_seed(seed)
        bound = 1 / math.sqrt(n_in)  # kaiming_uniform(a=√5), peft's and torch's Linear default
        with torch.no_grad():
            self.lora_A.weight.copy_(torch.rand(r, n_in, generator=g) * 2 * bound - bound)
            self.lora_B.weight.zero_()
        self.lora_A.weight.requires_grad_(train_a)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.dora = dora
        if dora:
            self.lora_magnitude_vector = nn.Parameter(dense_weight(base).detach().norm(dim=1).float())

    @property
    def in_features(self) -> int:
        return self.lora_A.in_features

    @property
    def out_features(self) -> int:
        return self.lora_B.out_features

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def set_rank(self, rank: int) -> None:
        if not 1 <= rank <= self.r:
            raise EfflmError(f"rank must be in 1..{self.r}, got {rank}")
        self.rank = rank

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A [rank, in], B [out, rank])`` at the active rank."""
        return self.lora_A.weight[: self.rank], self.lora_B.weight[:, : self.rank]

    def delta(self) -> torch.Tensor:
        A, B = self.factors()
        return (B @ A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        A, B = self.factors()
        lora = F.linear(F.linear(self.dropout(x), A.to(x.dtype)), B.to(x.dtype)) * self.scaling
        if not self.dora:
            return y + lora
        with torch.no_grad():  # the norm is a constant of the backward pass (DoRA §4.3): no graph, no saved copy
            w = dense_weight(self.base)
            norm = (w + self.delta().to(w.dtype)).norm(dim=1)
        m = (self.lora_magnitude_vector / norm).to(x.dtype)
        bias = getattr(self.base, "bias", None)
        base_out = y if bias is None else y - bias
        out = (m - 1) * base_out + m * lora  # = m·(Wx + ΔWx)/‖W+ΔW‖ − Wx, added to y
        return y + out

    def merged_weight(self) -> torch.Tensor:
        w = dense_weight(self.base).detach()
        merged = w + self.delta().detach().to(w.dtype)
        if self.dora:
            merged = merged * (self.lora_magnitude_vector.detach() / merged.norm(dim=1)).unsqueeze(1)
        return merged

    def extra_repr(self) -> str:
        return f"r={self.r}, rank={self.rank}, alpha={self.alpha}, dora={self.dora}"


class SVDLinear(nn.Module):
    """AdaLoRA's adapter: ``y = base(x) + (α/r)·P·diag(E)·Q·x`` with ``E`` the singular values the
    importance schedule masks (``lora_A`` = Q [r, in], ``lora_E`` [r, 1], ``lora_B`` = P [out, r])."""

    def __init__(self, base: nn.Module, r: int, alpha: float, seed: int = 0):
        super().__init__()
        n_in, n_out = dims(base)
        self.base, self.r, self.alpha = base, r, float(alpha)
        g = torch.Generator().manual_seed(seed)
        self.lora_A = nn.Parameter(torch.randn(r, n_in, generator=g) * 0.02)
        self.lora_B = nn.Parameter(torch.randn(n_out, r, generator=g) * 0.02)
        self.lora_E = nn.Parameter(torch.zeros(r, 1))
        self.register_buffer("ranknum", torch.tensor(float(r)), persistent=False)

    in_features = property(lambda self: self.lora_A.shape[1])
    out_features = property(lambda self: self.lora_B.shape[0])

    def delta(self) -> torch.Tensor:
        return self.lora_B @ (self.lora_A * self.lora_E) * (self.alpha / self.ranknum.clamp(min=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.alpha / self.ranknum.clamp(min=1)
        h = F.linear(x, (self.lora_A * self.lora_E).to(x.dtype))
        return self.base(x) + F.linear(h, self.lora_B.to(x.dtype)) * scale.to(x.dtype)

    def merged_weight(self) -> torch.Tensor:
        w = dense_weight(self.base).detach()
        return w + self.delta().detach().to(w.dtype)


class IA3Linear(nn.Module):
    """IA3: a learned vector rescales the output (keys, values) or, for a feed-forward module, the
    input (``down_proj``): ``y = base(x) ⊙ l`` or ``y = base(x ⊙ l)``; ``l`` starts at ones."""

    def __init__(self, base: nn.Module, feedforward: bool):
        super().__init__()
        n_in, n_out = dims(base)
        self.base, self.feedforward = base, feedforward
        self.ia3_l = nn.Parameter(torch.ones(1, n_in) if feedforward else torch.ones(n_out, 1))

    in_features = property(lambda self: self.base.in_features)
    out_features = property(lambda self: self.base.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        l = self.ia3_l.flatten().to(x.dtype)
        return self.base(x * l) if self.feedforward else self.base(x) * l

    def merged_weight(self) -> torch.Tensor:
        w = dense_weight(self.base).detach()
        l = self.ia3_l.detach().to(w.dtype)
        return w * l  # [out,1] scales rows; [1,in] scales columns

    def merged_bias(self) -> torch.Tensor | None:
        bias = getattr(self.base, "bias", None)
        if bias is None or self.feedforward:
            return bias
        return bias * self.ia3_l.detach().flatten()


ADAPTER_LINEARS = (LoraLinear, SVDLinear, IA3Linear)


def adapter_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every adapter Linear of ``model``, by path."""
    return {n: m for n, m in model.named_modules() if isinstance(m, ADAPTER_LINEARS)}
