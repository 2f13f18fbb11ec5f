"""``efflm serve --adapter``: one bare DIR (applied to every request) or named LoRA adapters
(``NAME=DIR``, repeatable) that requests choose with ``model``; ``--enable-lora`` for adapters
loaded at runtime only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from efflm.core.errors import EfflmError


def served_adapters(a: Any) -> list[tuple[str, str]] | None:
    """The named adapters to load at start (None: no per-request adapters); sets ``a.adapter``
    to the bare directory, if one was given. Every named one is checked here, before weights load."""
    from efflm.serve.adapters import NAME, lora_config

    bare, named = [], []
    for value in a.adapter or []:
        name, eq, path = value.partition("=")
        if eq and NAME.match(name) and not Path(value).exists():
            named.append((name, path))
        else:
            bare.append(value)
    if len(bare) > 1 or (bare and (named or a.enable_lora)):
        raise EfflmError("--adapter DIR (one adapter for every request) goes alone: name adapters (NAME=DIR) "
                         "to serve several, or to use --enable-lora")  # fmt: skip
    a.adapter = bare[0] if bare else None
    names = [n for n, _ in named]
    dup = sorted({n for n in names if names.count(n) > 1} | ({a.served_model_name or a.model} & set(names)))
    if dup:
        raise EfflmError(f"--adapter: the name '{dup[0]}' is given twice (or is the served model's)")
    for name, path in named:
        lora_config(path, label=f"--adapter {name}={path}")
    return named if named or a.enable_lora else None


def named_adapters(model: Any, a: Any, recipe: Any, named: list[tuple[str, str]]) -> Any:
    """The model's ``serve.adapters.Adapters`` with the named ones attached."""
    from efflm.serve.adapters import Adapters
    from efflm.trainer.checkpoints import base_identity

    adapters = Adapters(model, base_identity(a.model, recipe)["hash"])
    for name, path in named:
        adapters.attach(adapters.read(name, path))
    return adapters
