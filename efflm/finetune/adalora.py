"""AdaLoRA: Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning (Zhang et al.),
arXiv 2303.10512.

Algorithm: each adapter is in SVD form, ΔW = P·diag(λ)·Q, with P and Q kept near-orthogonal by
a penalty ‖PᵀP − I‖² + ‖QQᵀ − I‖². Every ΔT steps, each triplet (Pᵢ, λᵢ, Qᵢ) is scored by the
smoothed sensitivity |w·∂L/∂w| times its uncertainty (EMAs with β₁, β₂) summed over its
entries, and only the top b(t) triplets across all layers keep their λ; the budget b(t) falls
cubically from init_r to target_r per adapter between t_init and T − t_final.
Differs from the paper's and peft's code: none in the schedule or scores; saved as peft's
ADALORA with the pruned λ kept as zeros (no ``rank_pattern`` resizing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from efflm.core.errors import ConfigError
from efflm.core.fields import opt
from efflm.core.registry import register
from efflm.finetune.adapter import AdapterConfig, check_targets, inject, peft_targets
from efflm.finetune.hooks import TrainHooks
from efflm.nn.adapters import SVDLinear


@dataclass(frozen=True)
class AdaLoRAConfig(AdapterConfig):
    """AdaLoRA: SVD-form adapters whose rank budget falls from init_r to target_r per adapter."""

    method = "adalora"
    init_r: int = opt(12, "rank each adapter starts with (the triplets P·diag(λ)·Q it holds)")
    target_r: int = opt(8, "average rank per adapter the budget falls to, in 1..init_r")
    alpha: float = opt(16.0, "scale of the update: the adapter's output is multiplied by alpha / r (> 0)")
    tinit: int = opt(10, "warm-up steps at the initial budget before any pruning (≥ 0)")
    tfinal: int = opt(10, "final steps at the target budget, pruning fixed (≥ 0)")
    delta_t: int = opt(1, "steps between budget reallocations (> 0)")
    beta1: float = opt(0.85, "EMA factor of the triplets' sensitivity |w·∂L/∂w|, in [0, 1)")
    beta2: float = opt(0.85, "EMA factor of the sensitivity's uncertainty, in [0, 1)")
    orth_reg_weight: float = opt(0.5, "weight of the penalty ‖PᵀP − I‖² + ‖QQᵀ − I‖² added to the loss")

    @property
    def r(self) -> int:
        return self.init_r

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.target_r <= self.init_r:
            raise ConfigError(f"adalora: need 0 < target_r <= init_r, got {self.target_r} and {self.init_r}")
        if self.tinit < 0 or self.tfinal < 0 or self.delta_t <= 0:
            raise ConfigError("adalora: tinit and tfinal must be >= 0 and delta_t positive")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError("adalora: beta1 and beta2 must be in [0, 1)")

    def peft_config(self, hf_config: Any) -> dict:
        names = peft_targets(hf_config, self.target_modules)
        return {
            "peft_type": "ADALORA",
            "r": self.init_r,
            "init_r": self.init_r,
            "target_r": self.target_r,
            "lora_alpha": self.alpha,
            "target_modules": names,
            "tinit": self.tinit,
            "tfinal": self.tfinal,
            "deltaT": self.delta_t,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "orth_reg_weight": self.orth_reg_weight,
            "total_step": self.tinit + self.tfinal + 2,  # peft validates a budgeting phase exists
            "lora_dropout": 0.0,
            "bias": "none",
        }


def budget(step: int, total: int, cfg: AdaLoRAConfig, n_adapters: int) -> int:
    """The cubic schedule b(t): init budget until tinit, target budget after total − tfinal."""
    b0, bT = cfg.init_r * n_adapters, cfg.target_r * n_adapters
    end = max(total - cfg.tfinal, cfg.tinit + 1)
    if step < cfg.tinit:
        return b0
    if step >= end:
        return bT
    frac = 1 - (step - cfg.tinit) / (end - cfg.tinit)
    return int(bT + (b0 - bT) * frac**3)


class AdaLoRAHooks(TrainHooks):
    def __init__(self, config=None):
        super().__init__(config)
        self.ipt: dict[str, torch.Tensor] = {}
        self.unc: dict[str, torch.Tensor] = {}

    def state_dict(self):
        return {"ipt": self.ipt, "unc": self.unc}

    def load_state_dict(self, state):
        self.ipt, self.unc = dict(state["ipt"]), dict(state["unc"])

    @staticmethod
    def _named(model):
        return [(n, m) for n, m in model.named_modules() if isinstance(m, SVDLinear)]

    def _adapters(self, model):
        return [m for _, m in self._named(model)]

    def extra_loss(self, model):
        reg = 0.0
        for m in self._adapters(model):
            P, Q = m.lora_B, m.lora_A
            eye = torch.eye(m.r, dtype=P.dtype, device=P.device)
            reg = reg + ((P.T @ P - eye) ** 2).sum() + ((Q @ Q.T - eye) ** 2).sum()
        n = max(len(self._adapters(model)), 1)
        return self.config.orth_reg_weight * reg / n

    def _score(self, key: str, p: torch.Tensor, cfg: AdaLoRAConfig) -> torch.Tensor:
        s = (p * p.grad).abs().detach() if p.grad is not None else torch.zeros_like(p)
        if key not in self.ipt:
            self.ipt[key], self.unc[key] = torch.zeros_like(s), torch.zeros_like(s)
        elif self.ipt[key].device != s.device:  # read back from a checkpoint (kept on the CPU)
            self.ipt[key], self.unc[key] = self.ipt[key].to(s.device), self.unc[key].to(s.device)
        self.ipt[key].mul_(cfg.beta1).add_(s, alpha=1 - cfg.beta1)
        self.unc[key].mul_(cfg.beta2).add_((s - self.ipt[key]).abs(), alpha=1 - cfg.beta2)
        return self.ipt[key] * self.unc[key]

    def after_step(self, model, step, total_steps):
        cfg: AdaLoRAConfig = self.config
        named = self._named(model)
        adapters = [m for _, m in named]
        scores = []
        with torch.no_grad():
            for n, m in named:
                sE = self._score(n + ".E", m.lora_E, cfg).squeeze(1)
                sA = self._score(n + ".A", m.lora_A, cfg).mean(dim=1)
                sB = self._score(n + ".B", m.lora_B, cfg).mean(dim=0)
                scores.append(sE + sA + sB)
            if step < cfg.tinit or (step - cfg.tinit) % cfg.delta_t:
                return
            b = budget(step, total_steps, cfg, len(adapters))
            flat = torch.cat(scores)
            if b >= flat.numel():
                return
            threshold = flat.kthvalue(flat.numel() - b).values
            for m, s in zip(adapters, scores):
                m.lora_E.masked_fill_((s <= threshold).unsqueeze(1), 0.0)


@register(
    AdaLoRAConfig,
    family="finetune",
    title="AdaLoRA: Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning",
    arxiv="2303.10512",
    needs_calibration=False,
    paper="adaptive-budget-allocation-parameter-efficient-fine",
    check=check_targets,
    hooks=AdaLoRAHooks,
)
def apply(model: torch.nn.Module, config: AdaLoRAConfig, calib: Any = None) -> torch.nn.Module:
    return inject(
        model,
        config.target_modules,
        config.method,
        lambda path, base, i: SVDLinear(base, config.init_r, config.alpha, seed=config.seed * 100003 + i),
    )
