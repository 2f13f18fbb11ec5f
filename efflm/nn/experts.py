"""``Experts``: a mixture-of-experts block's experts as one Linear triple each.

transformers stores a sparse MoE block's experts as two stacked tensors (``gate_up_proj``
``[E, 2I, H]``, ``down_proj`` ``[E, H, I]``); efflm holds them as ``E`` small MLPs
(``experts.{e}.gate_proj`` / ``up_proj`` / ``down_proj``, the names Qwen-MoE checkpoints use), so
every method that replaces, observes or adapts a Linear does so for each expert, and a compressed
expert is the same ``QuantLinear`` as any other. ``forward(hidden, top_k_index, top_k_weights)`` is
transformers' experts call: each token goes through the experts its router chose, weighted.

``route_all(model)`` (calibration): inside it every expert computes every token, so each
expert's observers see all calibration tokens (llm-compressor's MoE calibration), while the block's
output still sums only the routed experts — the forward's result is unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn

from efflm.nn.module_registry import register_module


class ExpertMLP(nn.Module):
    """One expert: ``down(act(gate(x)) · up(x))``."""

    def __init__(self, hidden: int, intermediate: int, act: str, dtype: torch.dtype):
        super().__init__()
        from transformers.activations import ACT2FN

        self.gate_proj = nn.Linear(hidden, intermediate, bias=False, dtype=dtype)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False, dtype=dtype)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False, dtype=dtype)
        self.act_fn = ACT2FN[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


@register_module(role="experts")
class Experts(nn.ModuleList):
    """The experts of one sparse MoE block (``self[e]`` is expert ``e``)."""

    def __init__(self, num_experts: int, hidden: int, intermediate: int, act: str = "silu", dtype=torch.float32):
        super().__init__(ExpertMLP(hidden, intermediate, act, dtype) for _ in range(num_experts))
        self.hidden, self.intermediate, self.act, self.dtype = hidden, intermediate, act, dtype
        self.all_tokens = False  # route_all: every expert computes every token

    def spec(self) -> dict:
        return {
            "num_experts": len(self),
            "hidden": self.hidden,
            "intermediate": self.intermediate,
            "act": self.act,
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    @classmethod
    def from_spec(cls, spec: dict) -> "Experts":
        return cls(**{**spec, "dtype": getattr(torch, spec["dtype"])})

    @classmethod
    def from_stacked(cls, stacked: nn.Module, act: str) -> "Experts":
        """The experts of transformers' stacked module (``gate_up_proj [E, 2I, H]``, ``down_proj
        [E, H, I]``; rows of ``gate_up_proj``: gate, then up), each weight a copy of its own."""
        gate_up, down = stacked.gate_up_proj.detach(), stacked.down_proj.detach()
        E, two_i, H = gate_up.shape
        out = cls(E, H, two_i // 2, act, gate_up.dtype)
        for e, expert in enumerate(out):
            gate, up = gate_up[e].chunk(2, dim=0)
            expert.gate_proj.weight.data = gate.clone()
            expert.up_proj.weight.data = up.clone()
            expert.down_proj.weight.data = down[e].clone()
        return out.requires_grad_(stacked.gate_up_proj.requires_grad)

    def forward(self, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden)
        if self.all_tokens:
            for e, expert in enumerate(self):
                weight = (top_k_weights * (top_k_index == e)).sum(-1, keepdim=True)  # 0 where not routed
                out += (expert(hidden) * weight).to(out.dtype)
            return out
        hit = torch.zeros(len(self), dtype=torch.bool, device=hidden.device)
        hit[top_k_index.reshape(-1)] = True
        for e in hit.nonzero()[:, 0].tolist():
            token, slot = torch.where(top_k_index == e)
            y = self[e](hidden[token]) * top_k_weights[token, slot, None]
            out.index_add_(0, token, y.to(out.dtype))
        return out


def unstack_experts(model: nn.Module) -> nn.Module:
    """Replace each sparse MoE block's stacked experts (transformers' module) with ``Experts``, in
    place; a model without MoE blocks is returned as it is."""
    from efflm.models.arch import decoder_layers, layout_for, set_module

    layout = layout_for(model.config)
    if layout.experts is None:
        return model
    for layer in decoder_layers(model):
        stacked = layer.get_submodule(layout.experts)
        if not isinstance(stacked, Experts):
            set_module(layer, layout.experts, Experts.from_stacked(stacked, model.config.hidden_act))
    return model


def experts_of(model: nn.Module) -> list[Experts]:
    return [m for m in model.modules() if isinstance(m, Experts)]


@contextlib.contextmanager
def route_all(model: nn.Module) -> Iterator[None]:
    """Every expert of ``model`` computes every token while inside (observers see them all)."""
    blocks = experts_of(model)
    for b in blocks:
        b.all_tokens = True
    try:
        yield
    finally:
        for b in blocks:
            b.all_tokens = False
