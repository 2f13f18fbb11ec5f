"""MeZO: Fine-Tuning Language Models with Just Forward Passes.

arXiv 2305.17333 (Malladi et al., NeurIPS 2023). Algorithm (zeroth-order SGD, SPSA): draw
z ~ N(0, I) over the trainable parameters from a seed; evaluate the loss at θ + εz and θ − εz;
the projected gradient is g = (L₊ − L₋) / 2ε; update θ ← θ − lr·(g·z + wd·θ), regenerating z
from the same seed, so z is never stored and training needs inference memory. Works on any
trainable set: all weights, or a PEFT method's adapter (the paper's LoRA and prefix variants).
Differs from princeton-nlp/MeZO: the reference adds +εz, −2εz, +εz to the weights in place,
which is not bit-exact in floating point; here each module computes with θ ± εz made just
before its forward and dropped after it (one module's extra tensor at a time), so θ itself is
never touched by the two evaluations and stays bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class MeZO:
    """SPSA steps over ``model``'s trainable parameters; ``step(loss_fn, lr)`` per batch."""

    def __init__(self, model: torch.nn.Module, eps: float = 1e-3, weight_decay: float = 0.0, seed: int = 0):
        self.model, self.eps, self.weight_decay, self.seed = model, eps, weight_decay, seed
        self.params = {id(p): (i, p) for i, p in enumerate(p for p in model.parameters() if p.requires_grad)}
        self.steps = 0

    def z(self, index: int, p: torch.Tensor, step_seed: int) -> torch.Tensor:
        """Parameter ``index``'s direction at this step, regenerated identically on every call."""
        g = torch.Generator().manual_seed((step_seed * 1_000_003 + index) % 2**63)
        return torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype)

    def _perturbed(self, sign: float, step_seed: int):
        """Hooks giving every module θ + sign·ε·z for its own parameters during its forward only."""
        handles = []
        for module in self.model.modules():
            own = [(n, p) for n, p in module.named_parameters(recurse=False) if id(p) in self.params]
            if not own:
                continue

            def pre(mod, args, own=own):
                mod._mezo_saved = [(p, p.data) for _, p in own]
                for _, p in own:
                    i = self.params[id(p)][0]
                    p.data = p.data + sign * self.eps * self.z(i, p, step_seed)

            def post(mod, args, out):
                for p, original in mod._mezo_saved:
                    p.data = original  # the very tensor it was: bit-identical
                del mod._mezo_saved

            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
        return handles

    @torch.no_grad()
    def loss_at(self, loss_fn: Callable[[], torch.Tensor], sign: float, step_seed: int) -> float:
        handles = self._perturbed(sign, step_seed)
        try:
            return float(loss_fn())
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def step(self, loss_fn: Callable[[], torch.Tensor], lr: float) -> tuple[float, float]:
        """One SPSA step: returns (the mean of the two losses, the projected gradient)."""
        step_seed = self.seed * 7919 + self.steps
        plus, minus = self.loss_at(loss_fn, 1.0, step_seed), self.loss_at(loss_fn, -1.0, step_seed)
        g = (plus - minus) / (2 * self.eps)
        for i, p in self.params.values():
            if self.weight_decay:
                p.mul_(1 - lr * self.weight_decay)
            p.add_(self.z(i, p, step_seed), alpha=-lr * g)
        self.steps += 1
        return (plus + minus) / 2, g
