"""What every parameter-efficient method shares: choosing the target Linears, checking them
against the model's config before any work, wrapping them, freezing the rest, merging.

Target names are the last component of a decoder Linear's path (``q_proj``…), as in peft;
``all-linear`` means all seven. The model's own weights are frozen by ``efflm.models.ready``;
only the adapter tensors ``inject`` creates are trainable.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from efflm.core.errors import ConfigError
from efflm.core.fields import opt
from efflm.core.registry import MethodConfig
from efflm.models.arch import decoder_layers, get_module, in_features, layout_for, out_features, set_module
from efflm.nn.adapters import adapter_modules

ALL = "all-linear"


def linear_names(hf_config: Any) -> dict[str, list[str]]:
    """Short name (``q_proj``) -> paths inside a layer (``self_attn.q_proj``; in a MoE block, every
    expert's ``gate_proj``), as peft matches a target by the end of a module's name."""
    names: dict[str, list[str]] = {}
    for p in layout_for(hf_config).linears:
        names.setdefault(p.rsplit(".", 1)[-1], []).append(p)
    return names


def own_names(hf_config: Any, targets: tuple[str, ...]) -> list[str]:
    """Targets' short names as this model names its Linears (Llama's ``down_proj`` is OPT's ``fc2``),
    each once, in order."""
    names, aliases = linear_names(hf_config), dict(layout_for(hf_config).aliases)
    return list(dict.fromkeys(t if t in names else aliases.get(t, t) for t in targets))


def peft_targets(hf_config: Any, targets: tuple[str, ...]) -> list[str]:
    """The ``target_modules`` an adapter's peft config lists: the model's own short names."""
    return sorted(linear_names(hf_config)) if ALL in targets else own_names(hf_config, targets)


def resolve_targets(hf_config: Any, targets: tuple[str, ...], method: str) -> list[str]:
    """Paths inside a layer of the named targets (Llama's names are read as the family's, as
    ``Layout.aliases`` says); unknown names fail with the closest names."""
    names = linear_names(hf_config)
    if ALL in targets:
        return [p for paths in names.values() for p in paths]
    out = []
    for t in own_names(hf_config, targets):
        if t not in names:
            close = difflib.get_close_matches(t, list(names), n=2)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(
                f"{method}: the model has no target module {t!r}{hint} (its Linears: {', '.join(names)}, or {ALL})"
            )
        out += names[t]
    return out


def check_targets(hf_config: Any, config: Any) -> None:
    """Targets exist and the rank fits every targeted Linear (``r`` ≤ min(in, out))."""
    paths = resolve_targets(hf_config, config.target_modules, config.method)
    r = getattr(config, "r", None)
    if r is None:
        return
    ins, outs = in_features(hf_config), out_features(hf_config)
    for p in paths:
        if r > min(ins[p], outs[p]):
            raise ConfigError(f"{config.method}: r={r} exceeds {p}'s rank limit min({ins[p]}, {outs[p]})")


def inject(model: nn.Module, targets: tuple[str, ...], method: str, make: Callable[[str, nn.Module, int], nn.Module]):
    """Freeze the model, then replace each targeted Linear of every decoder layer with
    ``make(path, base, index)``: only the adapters' tensors train."""
    freeze_base(model)
    layers = layout_for(model.config).layers
    paths = resolve_targets(model.config, targets, method)
    n = 0
    for i in range(len(decoder_layers(model))):
        for p in paths:
            full = f"{layers}.{i}.{p}"
            set_module(model, full, make(full, get_module(model, full), n))
            n += 1
    return model


def freeze_base(model: nn.Module) -> None:
    """Freeze every tensor the adapters did not create (a compressed base's new modules —
    a pruned Linear, low-rank factors — are created trainable)."""
    model.requires_grad_(False)


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in trainable_parameters(model).values())


def merge(model: nn.Module, store: Callable[[nn.Module, nn.Linear], nn.Module] | None = None) -> nn.Module:
    """Fold every adapter Linear into a plain ``nn.Linear`` (dense base weights); ``store(adapter,
    merged)`` may put the merged weight back on the base's own storage (a quantized grid)."""
    for path, m in adapter_modules(model).items():
        w = m.merged_weight()
        bias = m.merged_bias() if hasattr(m, "merged_bias") else getattr(m.base, "bias", None)
        lin = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, dtype=torch.float32)
        with torch.no_grad():
            lin.weight.copy_(w)
            if bias is not None:
                lin.bias.copy_(bias)
        lin.requires_grad_(False)
        set_module(model, path, store(m, lin) if store is not None else lin)
    return model


def lora_apply(model: nn.Module, config: Any, **kwargs) -> nn.Module:
    """The LoRA family's ``apply``: a ``LoraLinear`` on every target (kwargs: ``dora``, ``train_a``)."""
    from efflm.nn.adapters import LoraLinear

    def make(path, base, i):
        return LoraLinear(base, config.r, config.alpha, config.dropout, seed=config.seed * 100003 + i, **kwargs)

    return inject(model, config.target_modules, config.method, make)


@dataclass(frozen=True)
class AdapterConfig(MethodConfig):
    """Fields every adapter method shares: the targeted Linears and the init seed."""

    target_modules: tuple[str, ...] = opt(
        (ALL,),
        "short names of the decoder Linears that get an adapter in every layer (q_proj, k_proj, v_proj, "
        "o_proj, gate_proj, up_proj, down_proj), or all-linear for all of them",
    )
    seed: int = opt(0, "seed of the adapters' random initialization")

    def __post_init__(self) -> None:
        if not self.target_modules:
            raise ConfigError(f"{self.method}: target_modules must name at least one Linear (or {ALL})")


@dataclass(frozen=True)
class LowRankAdapterConfig(AdapterConfig):
    """The LoRA family's fields: rank r, scale alpha (the update is scaled by alpha / r), dropout."""

    r: int = opt(8, "rank of each adapter's update BA (> 0, at most min(in, out) of every target)")
    alpha: float = opt(16.0, "scale of the update: the adapter's output is multiplied by alpha / r (> 0)")
    dropout: float = opt(0.0, "dropout probability on the adapter's input while training, in [0, 1)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.r <= 0:
            raise ConfigError(f"{self.method}: r must be positive, got {self.r}")
        if self.alpha <= 0:
            raise ConfigError(f"{self.method}: alpha must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"{self.method}: dropout must be in [0, 1), got {self.dropout}")

    def peft_config(self, hf_config: Any) -> dict:
        """The fields of peft's LoraConfig this adapter is saved as."""
        return {
            "peft_type": "LORA",
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": peft_targets(hf_config, self.target_modules),
            "use_dora": False,
            "bias": "none",
            "fan_in_fan_out": False,
            "init_lora_weights": True,
        }
