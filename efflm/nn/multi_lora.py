"""Many LoRA adapters over one base, chosen per batch row (Punica / S-LoRA's batched LoRA).

``MultiLoraLinear`` wraps a base Linear (dense or packed) and holds any number of named LoRA
pairs ``(A [r, in], B [out, r], scaling)``. A ``Routing`` shared by every wrapper of a model
says, for the step being run, which adapter each batch row uses (None: the base alone). The
forward computes the base product for the whole batch once, then, per adapter, gathers its
rows and adds ``scaling · (x A^T) B^T`` to them (Punica's segmented gather, done as one
index_add per adapter). A step whose rows all use the base costs one Python call more per
Linear than the bare base.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from efflm.core.errors import EfflmError


class Routing:
    """Which adapter each row of the current step uses (``rows[i]``: a name or None); setting
    ``rows`` groups them once per step (``groups``: name -> the row indices), for every wrapper."""

    def __init__(self) -> None:
        self.rows = None

    @property
    def rows(self) -> list[str | None] | None:
        return self._rows

    @rows.setter
    def rows(self, rows: list[str | None] | None) -> None:
        self._rows = rows
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(rows or ()):
            if name is not None:
                groups.setdefault(name, []).append(i)
        self.groups = {name: torch.tensor(idx) for name, idx in groups.items()}

    def routed(self) -> bool:
        """Whether any row of this step uses an adapter."""
        return bool(self.groups)


class MultiLoraLinear(nn.Module):
    """``y[i] = base(x[i]) + s_a · B_a A_a x[i]`` with ``a = routing.rows[i]`` (no term for None or
    for an adapter that does not adapt this module)."""

    def __init__(self, base: nn.Module, routing: Routing):
        super().__init__()
        self.base = base
        self.routing = routing
        self.loras: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}

    in_features = property(lambda self: self.base.in_features)
    out_features = property(lambda self: self.base.out_features)

    def add(self, name: str, A: torch.Tensor, B: torch.Tensor, scaling: float) -> None:
        if A.shape[1] != self.in_features or B.shape[0] != self.out_features or A.shape[0] != B.shape[1]:
            raise EfflmError(
                f"LoRA factors A {tuple(A.shape)}, B {tuple(B.shape)} do not fit a "
                f"{self.in_features}→{self.out_features} Linear"
            )
        where = next(iter([*self.base.parameters(), *self.base.buffers()]), A).device  # the base's device
        self.loras[name] = (A.to(where).contiguous(), B.to(where).contiguous(), float(scaling))

    def remove(self, name: str) -> None:
        self.loras.pop(name, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        routing = self.routing
        if not routing.groups or not self.loras:
            return y
        if len(routing.rows) != x.shape[0]:
            raise EfflmError(f"routing names {len(routing.rows)} rows for a batch of {x.shape[0]}")
        for name, idx in routing.groups.items():
            if name not in self.loras:  # this adapter does not adapt this Linear
                continue
            A, B, s = self.loras[name]
            if len(idx) == x.shape[0]:
                y = y + F.linear(F.linear(x, A.to(x.dtype)), B.to(x.dtype)) * s
                continue
            at = idx.to(x.device)
            delta = F.linear(F.linear(x.index_select(0, at), A.to(x.dtype)), B.to(x.dtype)) * s
            y = y.index_add(0, at, delta.to(y.dtype))
        return y

    def extra_repr(self) -> str:
        return f"adapters={sorted(self.loras)}"


def wrap(model: nn.Module, paths: list[str]) -> Routing:
    """Wrap the Linear at each of ``paths`` (module names in ``model``) in a ``MultiLoraLinear``
    sharing one ``Routing`` (kept on the model as ``efflm_routing``); return the routing."""
    routing = getattr(model, "efflm_routing", None) or Routing()
    for path in paths:
        parent_name, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, attr)
        if isinstance(base, MultiLoraLinear):
            continue
        if not (hasattr(base, "in_features") and hasattr(base, "out_features")):
            raise EfflmError(f"{path} is a {type(base).__name__}, not a Linear an adapter can add to")
        setattr(parent, attr, MultiLoraLinear(base, routing))
    model.efflm_routing = routing
    return routing


def routing_of(model: nn.Module) -> Routing | None:
    return getattr(model, "efflm_routing", None)


def wrappers(model: nn.Module) -> dict[str, MultiLoraLinear]:
    """Every ``MultiLoraLinear`` of ``model`` by path."""
    return {n: m for n, m in model.named_modules() if isinstance(m, MultiLoraLinear)}
