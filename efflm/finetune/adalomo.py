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
from efflm.core.fields import opt
from efflm.core.registry import register
from efflm.finetune.full_params import FullConfig, FullHooks, one_process, unfreeze
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
        return torch.linalg.vector_norm(x) / x.numel() ** 0.5

    def __call__(self, p: torch.nn.Parameter, g: torch.Tensor, lr: float) -> None:
        st = self.state.setdefault(id(p), {"t": 0})
        st["t"] += 1
        beta2 = 1.0 - st["t"] ** self.decay_rate
        if g.dim() == 2:
            self._matrix(p, g, lr, st, beta2)
            return
        g = g.float()
        if "v" not in st:
            st["v"] = torch.zeros_like(g)
        st["v"].mul_(beta2).add_(g * g + self.eps[0], alpha=1 - beta2)
        u = st["v"].rsqrt() * g
        u = u / (self.rms(u) / self.clip_threshold).clamp(min=1.0)
        self._apply(p, iter([(slice(None), u)]), lr)

    def _rows(self, g: torch.Tensor):
        """Row blocks of about ``BLOCK`` elements: no temporary is ever the size of the matrix (the
        embedding's gradient alone is 113 MB in the default model)."""
        step = max(1, BLOCK // g.shape[1])
        return [slice(i, i + step) for i in range(0, g.shape[0], step)]

    def _matrix(self, p: torch.nn.Parameter, g: torch.Tensor, lr: float, st: dict, beta2: float) -> None:
        """Factored second moments: row and column means of g² + ε₁, decayed by β₂ₜ; u = g / √v̂
        with v̂ = row·col / mean(row); u scaled down to RMS ≤ clip_threshold. Done a block of rows
        at a time (three passes: the means, RMS(u), the update)."""
        R, C = g.shape
        if "row" not in st:
            st["row"], st["col"] = torch.zeros(R, device=g.device), torch.zeros(C, device=g.device)
        col_sum = torch.zeros(C, device=g.device)
        row_mean = torch.empty(R, device=g.device)
        blocks = self._rows(g)
        for b in blocks:
            sq = g[b].float().square().add_(self.eps[0])  # out of place: g[b] may be g itself
            row_mean[b] = sq.mean(dim=1)
            col_sum += sq.sum(dim=0)
        st["row"].mul_(beta2).add_(row_mean, alpha=1 - beta2)
        st["col"].mul_(beta2).add_(col_sum / R, alpha=1 - beta2)
        r = (st["row"] / st["row"].mean()).rsqrt()
        c = st["col"].rsqrt()
        u_sq = sum(float((g[b].float() * r[b, None] * c).square_().sum()) for b in blocks)
        scale = 1.0 / max(1.0, (u_sq / (R * C)) ** 0.5 / self.clip_threshold)
        self._apply(p, ((b, g[b].float() * (r[b, None] * scale) * c) for b in blocks), lr)

    def _apply(self, p: torch.nn.Parameter, updates, lr: float) -> None:
        """θ ← θ·(1 − step·wd) − step·u with step = lr·max(ε₂, RMS(θ)); ``updates`` yields
        (rows, u[rows]) so a matrix's update is made and applied one block at a time."""
        step = lr * max(self.eps[1], float(self.rms(p.detach().float())))
        for rows, u in updates:
            w = p[rows]
            if self.weight_decay:
                w.mul_(1 - step * self.weight_decay)
            w.add_(u.to(p.dtype), alpha=-step)


BLOCK = 1 << 20  # elements per row block of a matrix's update


def adalomo(
    params: Iterable[torch.nn.Parameter], weight_decay: float = 0.0, max_grad_norm: float = 0.0, **kw
) -> FusedUpdate:
    """AdaLomo over ``params``: call ``.step(loss, lr)`` in place of backward + step."""
    return FusedUpdate(params, AdaLomoRule(weight_decay=weight_decay, **kw), max_grad_norm)


@dataclass(frozen=True)
class AdaLomoConfig(FullConfig):
    """Every weight trained by AdaLomo inside the backward pass. train.lr is the relative step
    size, train.max_grad_norm optional clipping (0 = off)."""

    method = "adalomo"
    clip_threshold: float = opt(1.0, "d > 0 of the grouped update normalization: each update's RMS is capped at d")
    decay_rate: float = opt(-0.8, "c in [-1, 0) of the second moments' decay β₂ₜ = 1 − tᶜ")
    eps2: float = opt(
        1e-3, "floor (> 0) of the weight RMS the relative step is scaled by: step = lr · max(eps2, RMS(W))"
    )

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
            model.parameters(), cfg.weight_decay, cfg.max_grad_norm, eps=(1e-30, c.eps2),
            clip_threshold=c.clip_threshold, decay_rate=c.decay_rate,
        )  # fmt: skip


@register(
    AdaLomoConfig,
    family="finetune",
    title="AdaLomo: Low-memory Optimization with Adaptive Learning Rate",
    arxiv="2310.10195",
    needs_calibration=False,
    paper="adalomo",
    hooks=AdaLomoHooks,
)
def apply(model: torch.nn.Module, config: AdaLomoConfig, calib: Any = None) -> torch.nn.Module:
    return unfreeze(model, config)
