"""The one training loop (parameter-efficient, full-parameter and distillation runs alike): AdamW
by default (a method may bring its own updater: LOMO, AdaLomo, MeZO), warm-up + cosine/linear/constant schedule, gradient accumulation,
clipping, optional gradient checkpointing and bf16 autocast, a chunked cross-entropy that
never holds the full ``[tokens, vocab]`` logits, evaluation every K steps, atomic
checkpoints and exact resume.

Every random choice is a function of ``(seed, step)`` — the batch a step reads, DyLoRA's
rank, dropout's generator state — so a resumed run reproduces the uninterrupted one.
It runs under ``accelerate`` (``accelerate launch`` spreads it over processes with DDP): each
process reads its own slice of the global batch and gradients are averaged by the wrapper.
It trains on one device (``device``: the CPU or a GPU; under DDP each process's own GPU): the
model is moved there first and every micro-batch follows it, after the method's ``batch`` hook.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from efflm.core import device as devices
from efflm.core.errors import ConfigError
from efflm.core.fields import opt
from efflm.core.progress import progress
from efflm.finetune.loss import chunked_cross_entropy
from efflm.models.arch import get_module, layout_for


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters (a method recipe's ``train:`` mapping); the defaults train LoRA
    on the default model."""

    steps: int = opt(100, "optimizer steps (> 0; `efflm finetune --steps` overrides it)")
    lr: float = opt(
        2e-4, "peak learning rate (> 0) after warm-up; LOMO/MeZO: the SGD step size, AdaLomo: the relative step"
    )
    schedule: str = opt("cosine", "learning-rate decay after warm-up: cosine, linear or constant")
    warmup: int = opt(10, "steps of linear warm-up from 0 to lr (≥ 0)")
    batch: int = opt(4, "sequences per optimizer step, global: split over processes and grad_accum (> 0)")
    grad_accum: int = opt(1, "micro-batches per optimizer step (> 0, dividing batch; LOMO and AdaLomo: 1)")
    seq_len: int = opt(256, "tokens per training sequence (> 0)")
    max_grad_norm: float = opt(1.0, "clip the gradients' global norm to this (≥ 0; 0: no clipping)")
    weight_decay: float = opt(0.0, "decoupled weight decay (AdamW's; LOMO, AdaLomo, MeZO apply it too)")
    seed: int = opt(0, "seed of every random choice, each a function of (seed, step): batches, dropout, ranks")
    eval_every: int = opt(0, "steps between held-out evaluations (≥ 0; 0: only at the end)")
    checkpoint_every: int = opt(25, "steps between checkpoints written to the output directory (> 0)")
    grad_checkpointing: bool = opt(
        False, "recompute each decoder layer's activations in the backward pass instead of keeping them"
    )
    bf16: bool | str = opt(
        "auto",
        "run the forward and backward passes under bf16 autocast (accelerate's mixed precision): true, false, "
        "or auto (on when training on a CUDA GPU, off on the CPU; a run records the value it used)",
    )
    loss_chunk: int = opt(
        512,
        "tokens per cross-entropy chunk: the head's logits are made and recomputed this many at a time "
        "(≥ 0; 0: all logits at once)",
    )

    def __post_init__(self) -> None:
        positive = ("steps", "batch", "grad_accum", "seq_len", "checkpoint_every")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"train: {name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise ConfigError(f"train: lr must be positive, got {self.lr}")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ConfigError(f"train: schedule must be cosine, linear or constant, got {self.schedule!r}")
        if self.warmup < 0 or self.eval_every < 0 or self.loss_chunk < 0 or self.max_grad_norm < 0:
            raise ConfigError("train: warmup, eval_every, loss_chunk and max_grad_norm must be >= 0")
        if self.batch % self.grad_accum:
            raise ConfigError(f"train: batch {self.batch} must be a multiple of grad_accum {self.grad_accum}")
        if not isinstance(self.bf16, bool) and self.bf16 != "auto":
            raise ConfigError(f"train: bf16 must be true, false or auto, got {self.bf16!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def on(self, device: torch.device | str) -> "TrainConfig":
        """This config as run on ``device``: ``bf16: auto`` made true on a CUDA GPU, false elsewhere
        (so a CPU run's config, fingerprint and stored recipe are what they were before ``auto``)."""
        if isinstance(self.bf16, bool):
            return self
        return dataclasses.replace(self, bf16=devices.is_cuda(device))


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak lr at ``step`` (0-based): linear warm-up, then the schedule to 0."""
    if step < cfg.warmup:
        return (step + 1) / (cfg.warmup + 1)
    if cfg.schedule == "constant":
        return 1.0
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * (1 + math.cos(math.pi * frac)) if cfg.schedule == "cosine" else 1 - frac


class LossModel(nn.Module):
    """``forward(batch) -> loss``: the decoder stack, then the chunked loss through the head
    (the unit ``accelerate`` wraps, so DDP sees one forward per micro-batch). ``objective``
    (a method's ``TrainHooks.loss``) replaces the cross-entropy, e.g. by a distillation loss."""

    def __init__(
        self,
        model: nn.Module,
        chunk: int,
        extra: Callable[[nn.Module], Any] | None = None,
        objective: Callable[[nn.Module, dict], torch.Tensor | None] | None = None,
    ):
        super().__init__()
        self.model, self.chunk, self.extra, self.objective = model, chunk, extra, objective
        layout = layout_for(model.config.model_type)
        self.backbone = get_module(model, layout.layers.rsplit(".", 1)[0])
        self.head = get_module(model, layout.lm_head)

    def hidden(self, input_ids, attention_mask, **kw):
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kw)

    def forward(self, input_ids, attention_mask, labels, **extra):
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, **extra}
        loss = self.objective(self, batch) if self.objective is not None else None
        if loss is None:
            hidden = self.hidden(input_ids, attention_mask).last_hidden_state
            loss = chunked_cross_entropy(hidden, self.head, labels, self.chunk)
        extra = self.extra(self.model) if self.extra is not None else None
        return loss if extra is None else loss + extra


@dataclass
class TrainState:
    step: int = 0
    losses: list[float] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    step_seconds: list[float] = field(default_factory=list)


def place(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A micro-batch on the device the model trains on (its tensors made on the CPU by the data,
    a method's hook or a teacher cache)."""
    return devices.move(batch, device)


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, Any]:
    opt = torch.optim.AdamW(trainable(model), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    return opt, sched


class AdamW:
    """The default updater: backward per micro-batch, clip, AdamW step, schedule."""

    kind = "backward"

    def __init__(self, model: nn.Module, cfg: TrainConfig):
        self.opt, self.sched = make_optimizer(model, cfg)

    def state_dict(self) -> dict:
        return {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])


SHARDED = (
    "train: accelerate's FSDP / DeepSpeed sharding is not supported: efflm writes checkpoints and adapters "
    "from rank 0's whole tensors (use DDP: accelerate launch --multi_gpu)"
)


def accelerator(device: torch.device, bf16: bool) -> Any:
    """accelerate's ``Accelerator`` for a run on ``device`` (``cpu=`` unless it is a CUDA GPU; that GPU
    made the current one, so ``cuda:N`` is honoured). accelerate keeps its state per process: in
    one process (no launcher) a run's device and precision replace an earlier run's."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
    if devices.is_cuda(device):
        torch.cuda.set_device(device)
    return Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=not devices.is_cuda(device))


def train(*args: Any, **kwargs: Any) -> TrainState:
    """``_train`` inside a forked RNG: its per-step seeding (dropout) leaves the caller's global
    torch RNG as it was (no process-wide side effect)."""
    with torch.random.fork_rng():
        return _train(*args, **kwargs)


def _train(
    model: nn.Module,
    cfg: TrainConfig,
    batch_at: Callable[[int, int, int], dict[str, torch.Tensor]],
    *,
    hooks: Any,
    state: TrainState | None = None,
    updater_state: dict | None = None,
    evaluate: Callable[[nn.Module], dict] | None = None,
    on_checkpoint: Callable[[TrainState, Any], None] | None = None,
    stop_at: int | None = None,
    device: torch.device | str | None = None,
) -> TrainState:
    """Train ``model``'s trainable tensors for ``cfg.steps`` optimizer steps.

    ``batch_at(step, micro, n_micro)`` returns micro-batch ``micro`` of step ``step`` (this
    process's slice). ``state``/``updater_state`` continue a checkpointed run. ``stop_at``
    ends early at that step, as an interruption would (tests of resume). The method's
    ``hooks.updater`` decides how weights change: AdamW after backward (the default), inside
    the backward pass (``kind == "fused"``: ``step(loss, lr)``) or from forward passes only
    (``kind == "zeroth"``: ``step(loss_fn, lr) -> (loss, projected gradient)``).
    ``device`` (default: where the model is) is where it trains: the model goes there before its
    updater is made, and every micro-batch follows it; ``train.bf16: auto`` is on for a CUDA GPU.
    """
    from accelerate.utils import DistributedType

    dev = devices.of(model) if device is None else torch.device(device)
    cfg = cfg.on(dev)
    acc = accelerator(dev, cfg.bf16)
    if acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM):
        raise ConfigError(SHARDED)
    if acc.num_processes > 1:  # launched: each process trains on the device accelerate gave it
        dev = acc.device
    model.to(dev)
    state = state or TrainState()
    if cfg.grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    updater = hooks.updater(model, cfg) or AdamW(model, cfg)
    if updater_state is not None:
        updater.load_state_dict(updater_state)
    loss_model = LossModel(model, cfg.loss_chunk, hooks.extra_loss, hooks.loss)
    if updater.kind == "backward":  # placed above already (DDP wraps it where it is)
        loss_model, opt = acc.prepare(loss_model, updater.opt, device_placement=[False, False])
    n_micro = cfg.grad_accum
    end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
    bar = progress(range(state.step, end), desc="train", total=end - state.step, leave=True)
    for step in bar:
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout, per step
        hooks.before_step(model, step, torch.Generator().manual_seed(cfg.seed * 7919 + step))
        t0, lr = time.perf_counter(), cfg.lr * lr_factor(step, cfg)
        batches = [place(hooks.batch(model, place(batch_at(step, m, n_micro), dev), step), dev) for m in range(n_micro)]
        tokens = sum(b["attention_mask"].sum() for b in batches)  # read after the step (no sync before it)
        if updater.kind == "backward":
            step_loss = 0.0
            for b in batches:
                with acc.autocast():
                    loss = loss_model(**b) / n_micro
                acc.backward(loss)
                shown = acc.reduce(loss.detach(), reduction="mean") if acc.num_processes > 1 else loss.detach()
                step_loss += float(shown)  # the global batch's loss on every process
            if cfg.max_grad_norm > 0:
                acc.clip_grad_norm_(trainable(model), cfg.max_grad_norm)
            opt.step()
            updater.sched.step()
            hooks.after_step(model, step, cfg.steps)
            opt.zero_grad(set_to_none=True)
        elif updater.kind == "fused":  # one micro-batch (checked by the method's check_train)
            with acc.autocast():
                loss = loss_model(**batches[0])
            updater.step(loss, lr)
            step_loss = float(loss.detach())
            hooks.after_step(model, step, cfg.steps)
        else:

            def loss_fn():
                with acc.autocast():
                    return sum(loss_model(**b) for b in batches) / n_micro

            step_loss, _ = updater.step(loss_fn, lr)
            hooks.after_step(model, step, cfg.steps)
        state.step_seconds.append(time.perf_counter() - t0)
        state.seconds += state.step_seconds[-1]
        state.step, state.tokens = step + 1, state.tokens + int(tokens)
        state.losses.append(step_loss)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{state.tokens / state.seconds:.0f}")
        last = state.step == cfg.steps
        if evaluate is not None and cfg.eval_every and state.step % cfg.eval_every == 0 and not last:
            model.eval()
            state.evals.append({"step": state.step, **evaluate(model)})
            model.train()
        if on_checkpoint is not None and (state.step % cfg.checkpoint_every == 0 or last or state.step == end):
            on_checkpoint(state, updater)
    hooks.finish(model)
    if cfg.grad_checkpointing:
        model.gradient_checkpointing_disable()
    model.eval()
    return state
