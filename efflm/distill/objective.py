"""What the distillation methods share: their config fields, what the student trains (a LoRA
adapter on any base, packed or pruned, or every weight), and the training objective the shared
loop calls — the student's divergence from a teacher's next-token distribution on the batch's
tokens, mixed with cross-entropy and optionally a hidden-state term.

The teacher is any efflm model with the student's tokenizer (``efflm.trainer`` loads it and checks
the vocabularies before loading weights); it runs under ``no_grad``, and the student's logits
are made a chunk of tokens at a time (``distill.chunked``), so the student never holds
``[tokens, vocab]`` logits for backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from efflm.core.errors import ConfigError
from efflm.core.fields import opt
from efflm.core.registry import MethodConfig
from efflm.distill import divergence as div
from efflm.distill.chunked import chunked_divergence
from efflm.distill.hidden import hidden_mse
from efflm.distill.topk import TopKCache, cached_divergence, packed
from efflm.finetune.full_params import FullConfig, unfreeze
from efflm.finetune.hooks import TrainHooks
from efflm.finetune.loss import chunked_cross_entropy, head_weight
from efflm.finetune.train import LossModel

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
ADAPT = ("lora", "full")


@dataclass(frozen=True)
class DistillConfig(MethodConfig):
    """The distillation methods' shared fields: the divergence from the teacher, what the student
    trains, and the optional cross-entropy and hidden-state terms."""

    divergence: str = opt(
        "forward_kl",
        "the student's divergence from the teacher's next-token distribution: forward_kl (Hinton, ×τ²), "
        "reverse_kl, or jsd (GKD's generalized JSD with beta)",
    )
    beta: float = opt(0.5, "jsd only: the generalized JSD's β in [0, 1] (0: forward KL, 1: reverse KL)")
    temperature: float = opt(1.0, "τ > 0 dividing both models' logits before the divergence")
    ce_weight: float = opt(
        0.0, "w in [0, 1] mixing in the cross-entropy on the data's tokens: (1 − w)·divergence + w·CE"
    )
    adapt: str = opt(
        "lora",
        "what the student trains: lora (an adapter of rank r on any base, packed ones included) or full "
        "(every weight; a pruned matrix keeps its zeros)",
    )
    r: int = opt(8, "adapt: lora: the adapter's rank (> 0)")
    alpha: float = opt(16.0, "adapt: lora: the adapter's scale; its update is multiplied by alpha / r (> 0)")
    hidden_weight: float = opt(
        0.0, "weight (≥ 0) of a hidden-state MSE towards the teacher's mapped layers, added to the loss; 0: off"
    )
    hidden_layers: tuple[int, ...] = opt(
        (), "student layer indices the hidden-state term covers (empty: every layer), mapped onto the teacher's"
    )

    def __post_init__(self) -> None:
        name = self.method
        if self.divergence not in DIVERGENCES:
            raise ConfigError(f"{name}: divergence must be one of {', '.join(DIVERGENCES)}, got {self.divergence!r}")
        if not 0 <= self.beta <= 1:
            raise ConfigError(f"{name}: beta must be in [0, 1], got {self.beta}")
        if not self.temperature > 0:
            raise ConfigError(f"{name}: temperature must be > 0, got {self.temperature}")
        if not 0 <= self.ce_weight <= 1:
            raise ConfigError(f"{name}: ce_weight must be in [0, 1], got {self.ce_weight}")
        if self.adapt not in ADAPT:
            raise ConfigError(f"{name}: adapt must be lora or full, got {self.adapt!r}")
        if self.r <= 0 or self.alpha <= 0:
            raise ConfigError(f"{name}: r and alpha must be positive")
        if self.hidden_weight < 0:
            raise ConfigError(f"{name}: hidden_weight must be >= 0, got {self.hidden_weight}")

    def adapter(self):
        """The LoRA config the student trains (None: every weight)."""
        from efflm.core.registry import config_from_dict

        if self.adapt == "full":
            return None
        return config_from_dict({"method": "lora", "r": self.r, "alpha": self.alpha})

    def divergence_fn(self):
        t = self.temperature
        if self.divergence == "forward_kl":
            return lambda s, te: div.forward_kl(s, te, t)
        if self.divergence == "reverse_kl":
            return lambda s, te: div.reverse_kl(s, te, t)
        return lambda s, te: div.generalized_jsd(s, te, self.beta, t)


def check(hf_config: Any, config: DistillConfig) -> None:
    n = getattr(hf_config, "num_hidden_layers", 0)
    bad = [i for i in config.hidden_layers if not 0 <= i < n]
    if bad:
        raise ConfigError(f"{config.method}: hidden_layers {bad} outside the student's {n} layers")


def prepare_student(model: nn.Module, config: DistillConfig) -> nn.Module:
    """The method's ``apply``: attach what the student trains."""
    from efflm.core.registry import get

    adapter = config.adapter()
    if adapter is None:
        return unfreeze(model, FullConfig())
    return get("lora").apply(model, adapter, None)


class DistillHooks(TrainHooks):
    """The loss of every distillation run; ``teacher`` is set by the run before training."""

    def __init__(self, config: DistillConfig | None = None):
        super().__init__(config)
        self.teacher: nn.Module | None = None
        self.cache: TopKCache | None = None
        self.adapter_config = config.adapter() if config is not None else None
        self.output = "adapter" if self.adapter_config is not None else "model"

    def attach(self, teacher: nn.Module) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self._teacher = LossModel(teacher, 0)  # its decoder stack and head, found as the student's are

    def use_cache(self, cache: TopKCache) -> None:
        """Read the teacher from a top-k cache instead of running it (``efflm distill-cache``)."""
        self.cache = cache

    def batch(self, model: nn.Module, batch: dict, step: int) -> dict:
        if self.cache is None:
            return batch
        index, logp = self.cache.lookup(step, batch["input_ids"])
        return {**batch, "teacher_index": index, "teacher_logp": logp}

    def loss(self, loss_model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg: DistillConfig = self.config
        if self.teacher is None and "teacher_index" not in batch:
            raise ConfigError(f"{cfg.method}: a distillation run needs a teacher (--teacher)")
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        hidden_too = cfg.hidden_weight > 0
        out = loss_model.hidden(ids, mask, output_hidden_states=hidden_too)
        keep = labels[:, 1:] != -100  # the positions whose next token counts
        h = out.last_hidden_state[:, :-1][keep]
        divergence = cfg.divergence_fn()
        if "teacher_index" in batch:  # cached top-k: k + 1 buckets, the tail's mass explicit
            t_logits = packed(batch["teacher_index"][keep], batch["teacher_logp"][keep])
            divergence = cached_divergence(divergence)
        else:
            with torch.no_grad():
                t_out = self._teacher.hidden(ids, mask, output_hidden_states=hidden_too)
                t_logits = self._teacher.head(t_out.last_hidden_state[:, :-1][keep])
        w = head_weight(loss_model.head)
        if w is None:  # a quantized head: its own forward, full logits
            kd = divergence(loss_model.head(h), t_logits)
        else:
            kd = chunked_divergence(h, w, t_logits, divergence, loss_model.chunk)
        loss = kd if cfg.ce_weight == 0 else (1 - cfg.ce_weight) * kd
        if cfg.ce_weight > 0:
            ce = chunked_cross_entropy(out.last_hidden_state, loss_model.head, labels, loss_model.chunk)
            loss = loss + cfg.ce_weight * ce
        if hidden_too:
            loss = loss + cfg.hidden_weight * hidden_mse(
                out.hidden_states, t_out.hidden_states, cfg.hidden_layers, mask
            )
        return loss
