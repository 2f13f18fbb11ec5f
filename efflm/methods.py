"""The one index of efflm's methods: importing it finds and imports every method file.

Every package above this one (the pipeline up to the CLI) looks methods up here (``get``,
``methods``, ``config_from_dict``, ``check_for_model``), never in the registry directly (an
import-linter contract forbids it), so every method is known wherever one is named. Nothing
here names a method: every module under the family packages (``PACKAGES``, walked with
pkgutil, in sorted order) is imported, and a module is a method ("paper") file when it
registers one with ``@register`` (``method_modules``). Adding a paper is adding its file;
``tests/core/test_discovery.py`` then asks for its line in the "no paper file imports another
paper file" contract (``pyproject.toml``) and its catalog entry (see docs/architecture.md).
Modules under the family packages must stay cheap to import: no work at import time beyond
definitions.
"""

from __future__ import annotations

import importlib
import pkgutil

from efflm.core.registry import FAMILIES, Method, MethodConfig, check_for_model, config_from_dict, get, methods

__all__ = [
    "FAMILIES",
    "Method",
    "MethodConfig",
    "check_for_model",
    "config_from_dict",
    "discover",
    "get",
    "method_modules",
    "methods",
]

# the method family packages: every module in them is imported (a method file registers itself)
PACKAGES = (
    "efflm.quantize",
    "efflm.prune",
    "efflm.lowrank",
    "efflm.inference",
    "efflm.finetune",
    "efflm.distill",
    "efflm.data_methods",
)
MODULES = ("efflm.models.dense",)  # method files outside them: the baseline (efflm.models holds specs)


def discover() -> list[str]:
    """The modules that may hold methods, sorted: all under ``PACKAGES``, plus ``MODULES``."""
    names = set(MODULES)
    for package in PACKAGES:
        path = importlib.import_module(package).__path__
        names.update(info.name for info in pkgutil.walk_packages(path, package + "."))
    return sorted(names)


def method_modules() -> dict[str, str]:
    """Each registered method's name → the module that registered it (its paper file)."""
    return {m.name: m.module for m in methods()}


for _name in discover():
    importlib.import_module(_name)
