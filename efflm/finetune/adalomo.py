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
from dataclasses import dataclass
from typing import Any

import torch

from efflm.core.errors import ConfigError
from efflm.core.registry import register
from efflm.finetune.full_params import FullConfig, FullHooks, one_process, trainable_of, unfreeze
from efflm.finetune.fused_update import FusedUpdate
from efflm.finetune.hooks import HOOKS


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


@dataclass(frozen=True)
class AdaLomoConfig(FullConfig):
    """Every weight trained by AdaLomo inside the backward pass. clip_threshold: the grouped
    update normalization's d; decay_rate: c in β₂ₜ = 1 − tᶜ; eps2: the smallest relative step
    scale. train.lr is the relative step size, train.max_grad_norm optional clipping (0 = off)."""

    method = "adalomo"
    clip_threshold: float = 1.0
    decay_rate: float = -0.8
    eps2: float = 1e-3

    def __post_init__(self) -> None:
        if self.clip_threshold <= 0 or self.eps2 <= 0:
            raise ConfigError("adalomo: clip_threshold and eps2 must be > 0")
        if not -1 <= self.decay_rate < 0:
            raise ConfigError(f"adalomo: decay_rate must be in [-1, 0), got {self.decay_rate}")


class AdaLomoHooks(FullHooks):
    def check_train(self, cfg: Any, world: int) -> None:
        one_process("adalomo", cfg, world, accumulate=False)

    def updater(self, model: torch.nn.Module, cfg: Any) -> FusedUpdate:
        c = self.config
        return adalomo(
            trainable_of(model), cfg.weight_decay, cfg.max_grad_norm, eps=(1e-30, c.eps2),
            clip_threshold=c.clip_threshold, decay_rate=c.decay_rate,
        )  # fmt: skip


HOOKS["adalomo"] = AdaLomoHooks


@register(
    AdaLomoConfig,
    family="finetune",
    title="AdaLomo: Low-memory Optimization with Adaptive Learning Rate",
    arxiv="2310.10195",
    needs_calibration=False,
    paper="adalomo",
)
def apply(model: torch.nn.Module, config: AdaLomoConfig, calib: Any = None) -> torch.nn.Module:
    return unfreeze(model, config)
