"""GKD: Generalized Knowledge Distillation for Auto-regressive Sequence Models (Agarwal et al.),
arXiv 2306.13649 (ICLR 2024, "On-Policy Distillation of Language Models").

Algorithm: with probability λ a step's batch is replaced by the student's own continuations of
the batch's prompts (sampled at the temperature), which the teacher then scores token by token;
otherwise the data's own tokens are used. The loss is the generalized JSD(β) between teacher
and student on the continuation tokens (β = 0 forward KL, β = 1 reverse KL).
Differs from the paper and trl's GKDTrainer: the continuations come from efflm's own decode path
(static KV cache, batched); a prompt is a row's unlabelled prefix, or the first half of a plain
text row; λ's draw is a function of (seed, step), so a resumed run makes the same choices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from efflm.core.errors import ConfigError
from efflm.core.fields import opt
from efflm.core.registry import register
from efflm.distill.objective import DistillConfig, DistillHooks, check, prepare_student


@dataclass(frozen=True)
class GKDConfig(DistillConfig):
    """GKD: KD's fields, plus on-policy batches sampled from the student (the defaults are trl's:
    β 0.5, λ 0.5, τ 0.9)."""

    method = "gkd"
    divergence: str = opt("jsd", "forward_kl, reverse_kl, or jsd (the generalized JSD with beta; GKD's default)")
    temperature: float = opt(
        0.9, "τ > 0: the on-policy continuations are sampled at it, and it divides both models' logits"
    )
    lmbda: float = opt(0.5, "probability in [0, 1] that a step trains on the student's own continuations")
    seed: int = opt(0, "seed of the on-policy draws and of the sampling (per step, so a resumed run repeats them)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.lmbda <= 1:
            raise ConfigError(f"gkd: lmbda must be in [0, 1], got {self.lmbda}")


def prompt_lengths(labels: torch.Tensor, mask: torch.Tensor) -> list[int]:
    """Each row's prompt: its unlabelled prefix, or half its tokens when every token is labelled."""
    out = []
    for y, m in zip(labels, mask):
        n = int(m.sum())
        labelled = (y[:n] != -100).nonzero()
        first = int(labelled[0]) if labelled.numel() else n
        out.append(first if first > 0 else max(1, n // 2))
    return out


@torch.no_grad()
def on_policy(model: torch.nn.Module, batch: dict, temperature: float, seed: int) -> dict:
    """The batch with each row's continuation replaced by the student's own sample (same
    length budget: the row's tokens after its prompt); labels only on the sampled tokens."""
    from efflm.inference.generate import SamplingConfig, generate_ids

    ids, mask = batch["input_ids"], batch["attention_mask"]
    B, T = ids.shape
    lens = prompt_lengths(batch["labels"], mask)
    width = max(lens)
    left = torch.zeros(B, width, dtype=ids.dtype, device=ids.device)
    valid = torch.zeros(B, width, dtype=torch.bool, device=ids.device)
    for i, n in enumerate(lens):
        left[i, width - n :], valid[i, width - n :] = ids[i, :n], True
    budget = max(int(mask[i].sum()) - n for i, n in enumerate(lens))
    was_training = model.training
    model.eval()
    try:
        cfg = SamplingConfig(max_new_tokens=max(budget, 1), temperature=temperature, seed=seed)
        outs, _ = generate_ids(model, None, left, valid, cfg)
    finally:
        model.train(was_training)
    new_ids, new_mask = torch.zeros_like(ids), torch.zeros_like(mask)
    labels = torch.full_like(ids, -100)
    for i, (n, g) in enumerate(zip(lens, outs)):
        row = torch.cat([ids[i, :n], torch.tensor(g.tokens[: T - n], dtype=ids.dtype, device=ids.device)])
        new_ids[i, : row.numel()], new_mask[i, : row.numel()] = row, 1
        labels[i, n : row.numel()] = row[n:]
    return {"input_ids": new_ids, "attention_mask": new_mask, "labels": labels}


class GKDHooks(DistillHooks):
    def batch(self, model: torch.nn.Module, batch: dict, step: int) -> dict:
        cfg: GKDConfig = self.config
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        if cfg.lmbda == 0 or float(torch.rand((), generator=g)) >= cfg.lmbda:
            return batch
        return on_policy(model, batch, cfg.temperature, cfg.seed * 7919 + step)


@register(
    GKDConfig,
    family="distill",
    title="GKD: Generalized Knowledge Distillation for Auto-regressive Sequence Models",
    arxiv="2306.13649",
    needs_calibration=False,
    paper="gkd",
    check=check,
    hooks=GKDHooks,
)
def apply(model: torch.nn.Module, config: GKDConfig, calib: Any = None) -> torch.nn.Module:
    return prepare_student(model, config)
