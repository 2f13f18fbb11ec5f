"""What a method adds to the one training loop (``efflm.finetune.train``), looked up by name.

A method file passes its ``TrainHooks`` subclass to ``@register(..., hooks=...)``; each run
gets a fresh instance made from its config (``hooks_for``, through the registry), so state
such as AdaLoRA's importance scores never leaks from one run into the next. Every hook is
optional:

* ``updater`` — how the step changes the weights: ``None`` means AdamW after a backward pass;
  LOMO and AdaLomo update inside the backward pass, MeZO from two forward passes.
* ``loss`` — the training objective: ``None`` means next-token cross-entropy; distillation
  returns its divergence against a teacher.
* ``batch`` — replace a step's batch (GKD's on-policy student continuations).
* ``extra_loss``, ``before_step``, ``after_step``, ``finish`` — regularizers and schedules.
* ``output`` — what the run saves: ``"adapter"`` (peft format) or ``"model"`` (every weight).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from efflm.core.registry import get


class TrainHooks:
    output = "adapter"

    def __init__(self, config: Any = None):
        self.config = config

    def check_train(self, cfg: Any, world: int) -> None:
        """Refuse training options this method cannot honour (before any weights load)."""

    def updater(self, model: nn.Module, cfg: Any) -> Any | None:
        return None

    def loss(self, loss_model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return None

    def batch(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        return batch

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        return None

    def before_step(self, model: nn.Module, step: int, generator: torch.Generator) -> None:
        pass

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        pass

    def finish(self, model: nn.Module) -> None:
        """After training (e.g. reset a sampled rank to the full one)."""

    def state_dict(self) -> dict:
        """What a checkpoint must keep for an exact resume."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def hooks_for(config: Any) -> TrainHooks:
    """A fresh hooks object for one run of ``config``'s method (its ``@register(hooks=...)``;
    the plain ``TrainHooks`` where it gave none)."""
    return (get(config.method).hooks or TrainHooks)(config)
