"""A recipe is a list of method configs, stored as YAML (``- method: rtn\\n  bits: 4``)."""

from __future__ import annotations

from pathlib import Path

import yaml

from efflm.core.errors import ConfigError, EfflmError
from efflm.core.registry import MethodConfig, config_from_dict

Recipe = list[MethodConfig]


def from_yaml(text: str, source: str = "recipe") -> Recipe:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}: not valid YAML{where}") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{source}: a recipe is a non-empty YAML list of steps, each with a 'method' key")
    return [config_from_dict(step) for step in data]


def to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump([c.to_dict() for c in recipe], sort_keys=False)


def load(path: str | Path) -> Recipe:
    p = Path(path)
    if not p.is_file():
        raise EfflmError(f"recipe file not found: {p}")
    return from_yaml(p.read_text(), source=str(p))


def label(recipe: Recipe) -> str:
    return " + ".join(c.label() for c in recipe)


def needs_calibration(recipe: Recipe) -> bool:
    from efflm.core.registry import get

    return any(get(c.method).needs_calibration for c in recipe)
