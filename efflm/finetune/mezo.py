"""MeZO: Fine-Tuning Language Models with Just Forward Passes.

arXiv 2305.17333 (Malladi et al., NeurIPS 2023). Algorithm (zeroth-order SGD, SPSA): draw
z ~ N(0, I) over the trainable parameters from a seed; evaluate the loss at θ + εz and θ − εz;
the projected gradient is g = (L₊ − L₋) / 2ε; update θ ← θ − lr·(g·z + wd·θ), regenerating z
from the same seed, so z is never stored and training needs inference memory. Works on any
trainable set: all weights, or a PEFT method's adapter (the paper's LoRA and prefix variants).
Differs from princeton-nlp/MeZO: the reference adds +εz, −2εz, +εz to the weights in place,
which is not bit-exact in floating point; here each module computes with θ ± εz made just
before its call and dropped after it (one module's extra tensors at a time; which module is
found by one recorded forward), so θ itself is never touched by the two evaluations and
stays bit-identical.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from efflm.core.errors import ConfigError
from efflm.core.fields import opt
from efflm.core.registry import config_from_dict, get, register
from efflm.finetune.full_params import FullConfig, FullHooks, keep_mask, one_process, unfreeze


class MeZO:
    """SPSA steps over ``model``'s trainable parameters; ``step(loss_fn, lr)`` per batch."""

    kind = "zeroth"  # for the training loop: forward passes only

    def __init__(self, model: torch.nn.Module, eps: float = 1e-3, weight_decay: float = 0.0, seed: int = 0):
        self.model, self.eps, self.weight_decay, self.seed = model, eps, weight_decay, seed
        self.params = {id(p): (i, p) for i, p in enumerate(p for p in model.parameters() if p.requires_grad)}
        self.steps = 0

    def z(self, index: int, p: torch.Tensor, step_seed: int) -> torch.Tensor:
        """Parameter ``index``'s direction at this step, regenerated identically on every call."""
        g = torch.Generator().manual_seed((step_seed * 1_000_003 + index) % 2**63)
        # drawn on the CPU (the same z on every device), then moved to the parameter
        z = torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.device, p.dtype)
        keep = keep_mask(p)  # a pruned weight's mask: its zeros stay zero
        return z if keep is None else z.mul_(keep)

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])

    @torch.no_grad()
    def plan(self, loss_fn: Callable[[], torch.Tensor]) -> None:
        """Find, by one recorded forward, the module during whose call each parameter must be
        perturbed: the deepest called module holding every module that owns it (a LoRA factor
        read as a slice belongs to its LoraLinear); a parameter with no such module (a head
        tied to the embedding and read outside any call) is perturbed for the whole loss."""
        called: set[int] = set()
        modules = dict(self.model.named_modules(remove_duplicate=False))
        handles = [m.register_forward_pre_hook(lambda mod, a: called.add(id(mod))) for m in modules.values()]
        try:
            loss_fn()
        finally:
            for h in handles:
                h.remove()
        owners: dict[int, list[str]] = {}
        for path, m in modules.items():
            for p in m.parameters(recurse=False):
                if id(p) in self.params:
                    owners.setdefault(id(p), []).append(path)

        def anchor(path: str) -> str | None:
            parts = path.split(".") if path else []
            for k in range(len(parts), -1, -1):
                if id(modules[".".join(parts[:k])]) in called:
                    return ".".join(parts[:k])
            return None

        self._owned: dict[str, list[int]] = {}
        self._global: list[int] = []
        for pid, paths in owners.items():
            common = os.path.commonprefix([p.split(".") if p else [] for p in paths])  # list-wise
            at = anchor(".".join(common))
            (self._owned.setdefault(at, []) if at is not None else self._global).append(pid)
        self._modules = modules

    def _swap(self, pids: list[int], sign: float, step_seed: int) -> list:
        saved = []
        for pid in pids:
            i, p = self.params[pid]
            saved.append((p, p.data))
            p.data = self.z(i, p, step_seed).mul_(sign * self.eps).add_(p.data)  # one new tensor, no temporaries
        return saved

    @staticmethod
    def _restore(saved: list) -> None:
        for p, original in saved:
            p.data = original  # the very tensor it was: bit-identical

    def _perturbed(self, sign: float, step_seed: int):
        """Hooks giving each planned module θ + sign·ε·z for its parameters during its call only."""
        handles = []
        for path, pids in self._owned.items():

            def pre(mod, args, pids=pids):
                mod.__dict__.setdefault("_mezo_saved", []).append(self._swap(pids, sign, step_seed))

            def post(mod, args, out):
                self._restore(mod.__dict__["_mezo_saved"].pop())

            module = self._modules[path]
            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
        return handles

    @torch.no_grad()
    def loss_at(self, loss_fn: Callable[[], torch.Tensor], sign: float, step_seed: int) -> float:
        if not hasattr(self, "_owned"):
            self.plan(loss_fn)
        handles = self._perturbed(sign, step_seed)
        saved = self._swap(self._global, sign, step_seed)
        try:
            return float(loss_fn())
        finally:
            self._restore(saved)
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


@dataclass(frozen=True)
class MeZOConfig(FullConfig):
    """MeZO: SPSA from two forward passes (train.lr is the step size: the paper uses 1e-6 to 1e-7
    over all weights, 1e-4 to 1e-2 over an adapter)."""

    method = "mezo"
    eps: float = opt(1e-3, "perturbation scale ε (> 0): the loss is evaluated at θ ± εz")
    over: str = opt(
        "all",
        "the trainable set: all (every weight), or the name of a parameter-efficient method (lora, "
        "prefix_tuning, …) whose fresh adapter is trained",
    )
    r: int = opt(8, "the adapter's rank when over names a method that has one (> 0)")

    def __post_init__(self) -> None:
        if not self.eps > 0:
            raise ConfigError(f"mezo: eps must be > 0, got {self.eps}")
        if self.r <= 0:
            raise ConfigError(f"mezo: r must be positive, got {self.r}")

    def adapter(self):
        """The config of the adapter MeZO trains (None: every weight)."""
        if self.over == "all":
            return None
        fields = get(self.over).config_cls.__dataclass_fields__
        return config_from_dict({"method": self.over, **({"r": self.r} if "r" in fields else {})})


def check(hf_config: Any, config: MeZOConfig) -> None:
    if config.over == "all":
        return
    m = get(config.over)
    if m.family != "finetune" or issubclass(m.config_cls, FullConfig):
        raise ConfigError(f"mezo: over must be 'all' or a parameter-efficient method, got {config.over!r}")
    if m.check is not None:
        m.check(hf_config, config.adapter())


class MeZOHooks(FullHooks):
    def __init__(self, config: MeZOConfig | None = None):
        super().__init__(config)
        self.adapter_config = config.adapter() if config is not None else None
        if self.adapter_config is not None:
            self.output = "adapter"

    def check_train(self, cfg: Any, world: int) -> None:
        one_process("mezo", cfg, world)

    def updater(self, model: torch.nn.Module, cfg: Any) -> MeZO:
        return MeZO(model, self.config.eps, cfg.weight_decay, seed=cfg.seed)


@register(
    MeZOConfig,
    family="finetune",
    title="Fine-Tuning Language Models with Just Forward Passes",
    arxiv="2305.17333",
    needs_calibration=False,
    paper="fine-tuning-language-models-just-forward",
    check=check,
    hooks=MeZOHooks,
)
def apply(model: torch.nn.Module, config: MeZOConfig, calib: Any = None) -> torch.nn.Module:
    adapter = config.adapter()
    if adapter is None:
        return unfreeze(model, config)
    return get(adapter.method).apply(model, adapter, None)
