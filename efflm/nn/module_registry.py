"""The registry of efflm's module classes, so file formats never name a concrete class.

A module class registers itself with ``@register_module(role=...)``; it provides ``spec()``
(the constructor arguments a loader needs to rebuild the empty shell) and ``from_spec``.
The ``role`` says what an exporter may rely on:

* ``"weight_grid"``: weight-only integer codes on a per-group grid — ``bits``,
  ``group_size``, ``symmetric``, ``in_features``, ``out_features``, ``bias``, ``scales``,
  ``codes()`` and ``dequantize(dtype)`` (compressed-tensors and GGUF export these);
* ``"w8a8"``, ``"embedding"``, ``"lowrank"``: saved and loaded by efflm only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from efflm.core.errors import EfflmError

MODULES: dict[str, type[nn.Module]] = {}
ROLES: dict[str, str] = {}


def register_module(role: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        if cls.__name__ in MODULES:
            raise ValueError(f"module class {cls.__name__!r} registered twice")
        MODULES[cls.__name__], ROLES[cls.__name__] = cls, role
        return cls

    return wrap


def module_class(name: str) -> type[nn.Module]:
    if name not in MODULES:
        raise EfflmError(f"unknown efflm module type {name!r} (known: {', '.join(sorted(MODULES))})")
    return MODULES[name]


def role(module: nn.Module) -> str | None:
    """The registered role of a module (None for an ordinary torch module)."""
    return ROLES.get(type(module).__name__) if type(module) is MODULES.get(type(module).__name__) else None


def efflm_modules(model: nn.Module, role_: str | None = None) -> dict[str, nn.Module]:
    """Every registered module of ``model`` by path (only those of ``role_`` if given)."""
    return {name: m for name, m in model.named_modules() if role(m) is not None and (role_ is None or role(m) == role_)}
