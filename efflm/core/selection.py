"""Which decoder Linears a recipe step changes: ``ignore`` and ``targets`` (llm-compressor's names).

A pattern is a module's full name (``model.layers.0.mlp.down_proj``), a short name matching the
end of a full name at a dot (``down_proj``, ``mlp.down_proj``), or ``re:REGEX`` matched from the
start of the full name (``re:model\\.layers\\.(0|31)\\.mlp\\.down_proj``). A step changes the
Linears its ``targets`` match (every decoder Linear when empty) that no ``ignore`` pattern
matches. ``lm_head`` and the embeddings are never changed by these methods: ``lm_head`` is
ignored by default, as the anchors' recipes say. Per-module choices are steps: one step for
most modules and another, with other settings and ``targets``, for the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from efflm.core.errors import ConfigError
from efflm.core.fields import opt
from efflm.core.registry import MethodConfig

PATTERN_HELP = (
    "full names, short names matching a name's end at a dot (down_proj, mlp.down_proj) or re:REGEX matched "
    "from the start of the full name"
)


def matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.match(pattern[3:], name) is not None
    return name == pattern or name.endswith("." + pattern)


@dataclass(frozen=True)
class ModuleSelection(MethodConfig):
    """A step that changes decoder Linears one by one: which of them it changes."""

    ignore: tuple[str, ...] = opt(("lm_head",), f"modules left as they are: {PATTERN_HELP}", quiet=True)
    targets: tuple[str, ...] = opt((), f"only these modules (empty: every decoder Linear): {PATTERN_HELP}", quiet=True)

    def selects(self, name: str) -> bool:
        """Whether this step changes the module ``name``."""
        if self.targets and not any(matches(p, name) for p in self.targets):
            return False
        return not any(matches(p, name) for p in self.ignore)

    def is_default_selection(self) -> bool:
        return self.ignore == ("lm_head",) and not self.targets


def check_names(config: MethodConfig, names: list[str]) -> None:
    """Every pattern of ``config`` matches a module of the model (``names``), and something is left to change."""
    if not isinstance(config, ModuleSelection):
        return
    for kind, patterns in (("ignore", config.ignore), ("targets", config.targets)):
        for p in patterns:
            if not isinstance(p, str) or not p.strip():
                raise ConfigError(f"{config.method}: {kind} holds module names or re: patterns, got {p!r}")
            if p.startswith("re:"):
                try:
                    re.compile(p[3:])
                except re.error as e:
                    raise ConfigError(f"{config.method}: bad regular expression {p!r} in {kind}: {e}") from None
            if not any(matches(p, n) for n in names):
                raise ConfigError(
                    f"{config.method}: {kind} pattern {p!r} matches no module of this model "
                    f"(decoder Linears are named like {names[0]})"
                )
    if not any(config.selects(n) for n in names):
        raise ConfigError(f"{config.method}: its targets and ignore patterns leave no module to change")
