"""Named LoRA adapters served side by side over one base (``efflm serve --adapter NAME=DIR``,
``--enable-lora``; vLLM's ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``).

At start every decoder Linear (attention, and the MLP of dense models) is wrapped in an
``efflm.nn.multi_lora.MultiLoraLinear``; an adapter is then only its factors added to the
wrappers it targets, so adapters load and unload while the server runs, and rows using
different adapters (or none) share a batch. Files are read and checked off the scheduler
thread (``read``); the wrappers change on it (``attach``/``detach``), between steps.

Served this way: LoRA adapters (efflm's lora, lora_fa, dylora at its save rank, qlora on
its NF4 base; peft's LoRA). DoRA, AdaLoRA, IA3 and prompt-side adapters change more than a
low-rank sum; they are served as the model's one adapter (a bare ``--adapter DIR``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from efflm.core.errors import EfflmError
from efflm.finetune.peft_files import PREFIX, check_base, read_adapter_config
from efflm.models.arch import layout_for
from efflm.nn.multi_lora import Routing, wrap, wrappers

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
SERVED = ("lora", "lora_fa", "dylora", "qlora")


@dataclass
class Loaded:
    """One adapter's factors by module path, as read from its directory."""

    name: str
    path: str
    factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]]


def lora_config(path: str | Path, label: str | None = None) -> tuple[Any, dict]:
    """The adapter directory's config and metadata, refused in one line (``label``: how to name it)
    unless it is a LoRA adapter served per request."""
    config, meta = read_adapter_config(path)
    if config.method not in SERVED:
        raise EfflmError(f"{label or path}: a {config.method} adapter is not served per request (LoRA ones are: "
                         f"{', '.join(SERVED)}); serve it as the model's one adapter (--adapter DIR)")  # fmt: skip
    return config, meta


def targets(model: Any) -> list[str]:
    """The Linears a served adapter may adapt: every attention Linear, and the MLP's of dense models
    (a mixture-of-experts block sends each expert a subset of the rows)."""
    layout = layout_for(model.config)
    inner = layout.attn_linears + (() if layout.experts else layout.mlp_linears)
    return [f"{layout.layers}.{i}.{n}" for i in range(model.config.num_hidden_layers) for n in inner]


class Adapters:
    """The named adapters of one served model. ``generation[name]`` changes on every load, so the
    prefix cache never mixes an adapter's KV with a later one's of the same name."""

    def __init__(self, model: Any, base_hash: str | None = None):
        self.model, self.base_hash = model, base_hash
        self.routing: Routing = wrap(model, targets(model))
        self.wrapped = wrappers(model)
        self.paths: dict[str, str] = {}
        self.generation: dict[str, int] = {}
        self._loads = 0

    def names(self) -> list[str]:
        return list(self.paths)

    def read(self, name: str, path: str | Path) -> Loaded:
        """The adapter at ``path`` checked against this base and read (no model change)."""
        if not isinstance(name, str) or not NAME.match(name):
            raise EfflmError(f"adapter name {name!r}: use letters, digits, '.', '_', ':' or '-' (up to 64)")
        path = Path(path)
        config, meta = lora_config(path)
        check_base(path, meta, self.base_hash)
        rank = getattr(config, "save_rank", 0) or config.r
        scaling = config.alpha / rank
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        with safe_open(str(path / "adapter_model.safetensors"), "pt") as f:
            for key in f.keys():
                if not key.startswith(PREFIX) or not key.endswith((".lora_A.weight", ".lora_B.weight")):
                    raise EfflmError(f"{path}: tensor {key} is not a LoRA factor of a Linear")
                module, _, which = key[len(PREFIX) :].rpartition(".lora_")
                pairs.setdefault(module, {})[which[0]] = f.get_tensor(key)
        factors = {}
        for module, ab in sorted(pairs.items()):
            if module not in self.wrapped:
                raise EfflmError(f"{path}: adapts {module}, which is not served per request "
                                 "(attention Linears and dense MLPs are)")  # fmt: skip
            if set(ab) != {"A", "B"}:
                raise EfflmError(f"{path}: {module} has lora_{'A' if 'B' in ab else 'B'} but not its pair")
            A, B = ab["A"].float()[:rank], ab["B"].float()[:, :rank]
            lin = self.wrapped[module]
            if A.shape != (rank, lin.in_features) or B.shape != (lin.out_features, rank):
                raise EfflmError(f"{path}: {module}'s factors {tuple(A.shape)}, {tuple(B.shape)} do not fit "
                                 f"this base's {lin.in_features}→{lin.out_features} Linear at rank {rank}")  # fmt: skip
            factors[module] = (A, B, scaling)
        if not factors:
            raise EfflmError(f"{path}: the adapter has no LoRA factors")
        return Loaded(name, str(path), factors)

    def attach(self, loaded: Loaded) -> None:
        """Add a read adapter to the model (on the scheduler thread, between steps)."""
        if loaded.name in self.paths:
            raise EfflmError(f"an adapter named '{loaded.name}' is already loaded")
        for module, (A, B, s) in loaded.factors.items():
            self.wrapped[module].add(loaded.name, A, B, s)
        self._loads += 1
        self.paths[loaded.name], self.generation[loaded.name] = loaded.path, self._loads

    def detach(self, name: str) -> None:
        if name not in self.paths:
            raise EfflmError(f"no adapter named '{name}' is loaded")
        for lin in self.wrapped.values():
            lin.remove(name)
        del self.paths[name], self.generation[name]

    def salt(self, name: str | None) -> bytes:
        """What the prefix cache mixes into a prompt's block names for this adapter."""
        return b"" if name is None else f"{name}#{self.generation[name]}".encode()
