"""AdaLomo: Low-memory Optimization with Adaptive Learning Rate.

arXiv 2310.10195 (Lv et al., 2023). Algorithm: LOMO's fused update with a per-parameter
adaptive step — the second moment of a matrix's gradient kept factored as row and column
means of g² + ε₁ (Adafactor), decayed by β₂ₜ = 1 − t^c (c = −0.8); u = g / √v̂; grouped update
normalization u / max(1, RMS(u)/d); the step scaled by the parameter's own size,
lr · max(ε₂, RMS(θ)). No first moment: memory is O(rows + cols) per matrix.
Differs from OpenLMLab's collie/lomo-optim code: no fp16 loss scaling; the step count is kept
per parameter (each parameter is updated once per step, so it equals the global count).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from efflm.finetune.fused_update import FusedUpdate


class AdaLomoRule:
    """The AdaLomo update of one parameter, with its factored second-moment state."""

    def __init__(
        self, eps: tuple[float, float] = (1e-30, 1e-3), clip_threshold: float = 1.0, decay_rate: float = -0.8,
        weight_decay: float = 0.0,
    ):  # fmt: skip
        self.eps, self.clip_threshold, self.decay_rate, self.weight_decay = (
            eps,
            clip_threshold,
            decay_rate,
            weight_decay,
        )
        self.state: dict[int, dict] = {}

    @staticmethod
    def rms(x: torch.Tensor) -> torch.Tensor:
        return x.norm(2) / x.numel() ** 0.5

    def __call__(self, p: torch.nn.Parameter, g: torch.Tensor, lr: float) -> None:
        g = g.float()
        st = self.state.setdefault(id(p), {"t": 0})
        st["t"] += 1
        beta2 = 1.0 - st["t"] ** self.decay_rate
        sq = g * g + self.eps[0]
        if g.dim() >= 2:
            if "row" not in st:
                st["row"], st["col"] = torch.zeros(g.shape[:-1]), torch.zeros(g.shape[:-2] + g.shape[-1:])
            st["row"].mul_(beta2).add_(sq.mean(dim=-1), alpha=1 - beta2)
            st["col"].mul_(beta2).add_(sq.mean(dim=-2), alpha=1 - beta2)
            r = (st["row"] / st["row"].mean(dim=-1, keepdim=True)).rsqrt().unsqueeze(-1)
            u = r * st["col"].unsqueeze(-2).rsqrt() * g
        else:
            if "v" not in st:
                st["v"] = torch.zeros_like(g)
            st["v"].mul_(beta2).add_(sq, alpha=1 - beta2)
            u = st["v"].rsqrt() * g
        u = u / (self.rms(u) / self.clip_threshold).clamp(min=1.0)
        w = p.float()
        step = lr * max(self.eps[1], float(self.rms(w)))
        if self.weight_decay:
            w.mul_(1 - step * self.weight_decay)
        w.add_(u, alpha=-step)
        p.copy_(w.to(p.dtype))


def adalomo(
    params: Iterable[torch.nn.Parameter], weight_decay: float = 0.0, max_grad_norm: float = 0.0, **kw
) -> FusedUpdate:
    """AdaLomo over ``params``: call ``.step(loss, lr)`` in place of backward + step."""
    return FusedUpdate(params, AdaLomoRule(weight_decay=weight_decay, **kw), max_grad_norm)
