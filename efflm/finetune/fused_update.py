"""Updating each parameter inside the backward pass (LOMO's fusion, shared by LOMO and AdaLomo).

``FusedUpdate`` hooks every trainable parameter (``register_post_accumulate_grad_hook``): the
moment a parameter's gradient is complete, the update rule applies it and the gradient is
dropped, so at most one parameter's gradient exists at a time. Gradient-norm clipping needs
the global norm before the first update; as in the LOMO paper, an optional first backward
pass (the graph retained) only accumulates squared norms, and the second applies the clipped
updates.

A rule is ``rule(param, grad, lr)`` (in place, under ``no_grad``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

Rule = Callable[[torch.nn.Parameter, torch.Tensor, float], None]


class FusedUpdate:
    kind = "fused"  # for the training loop: ``step(loss, lr)`` replaces backward + optimizer step

    def __init__(self, params: Iterable[torch.nn.Parameter], rule: Rule, max_grad_norm: float = 0.0):
        self.params = [p for p in params if p.requires_grad]
        self.rule, self.max_grad_norm = rule, max_grad_norm
        self._norm_pass, self._sq, self._scale, self._lr = False, 0.0, 1.0, 0.0
        self._handles = [p.register_post_accumulate_grad_hook(self._hook) for p in self.params]

    @torch.no_grad()
    def _hook(self, p: torch.nn.Parameter) -> None:
        g = p.grad
        p.grad = None  # the only reference left is ``g``, gone when this returns
        if self._norm_pass:
            self._sq += float(g.float().pow(2).sum())
            return
        self.rule(p, g if self._scale == 1.0 else g * self._scale, self._lr)

    def step(self, loss: torch.Tensor, lr: float) -> float:
        """Backward ``loss`` and update every parameter on the way; returns the gradient norm
        (measured only when clipping, else nan)."""
        norm = float("nan")
        self._scale, self._lr = 1.0, lr
        if self.max_grad_norm > 0:
            self._norm_pass, self._sq = True, 0.0
            try:
                loss.backward(retain_graph=True)
            finally:
                self._norm_pass = False
            norm = math.sqrt(self._sq)
            self._scale = min(1.0, self.max_grad_norm / (norm + 1e-6))
        loss.backward()
        return norm

    def state_dict(self) -> dict:
        """The rule's per-parameter state (AdaLomo's moments), keyed by parameter position."""
        state = getattr(self.rule, "state", None)
        if state is None:
            return {}
        return {i: state[id(p)] for i, p in enumerate(self.params) if id(p) in state}

    def load_state_dict(self, saved: dict) -> None:
        state = getattr(self.rule, "state", None)
        if state is not None:
            from efflm.core.device import move

            saved = {int(i): s for i, s in saved.items()}
            state.clear()  # each parameter's state where the parameter is (checkpoints keep CPU copies)
            state.update({id(p): move(saved[i], p.device) for i, p in enumerate(self.params) if i in saved})

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
