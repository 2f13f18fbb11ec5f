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


def to_stored(recipe: Recipe, **run) -> str:
    """A results row's ``recipe`` column: the bare step list, or, for a run that trained
    (``data``, ``train``), one YAML mapping ``{steps: [...], data: ..., train: {...}}``."""
    steps = [c.to_dict() for c in recipe]
    return yaml.safe_dump({"steps": steps, **run} if run else steps, sort_keys=False)


def _legacy_split(text: str):
    """Rows written before ``to_stored``: a step list with ``data:``/``train:`` keys appended
    at the top level (not one YAML document). Parse the list and the mapping apart."""
    lines = text.splitlines(keepends=True)
    cut = next((i for i, ln in enumerate(lines) if ln.strip() and not ln.startswith(("-", " ", "#"))), len(lines))
    return yaml.safe_load("".join(lines[:cut])), yaml.safe_load("".join(lines[cut:])) or {}


def from_stored(text: str) -> tuple[list[dict], dict]:
    """A results row's ``recipe`` column read back: ``(steps, run)``, the steps as plain dicts
    (each with a ``method`` key) and the run's training settings (``{}`` for a compression row).
    Reads every form efflm has written: a bare list, the ``steps`` mapping, and the legacy
    list-then-mapping text of fine-tuned rows."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = _legacy_split(text)
        data = {"steps": data[0], **data[1]}
    if isinstance(data, list):
        data = {"steps": data}
    elif isinstance(data, dict) and "steps" not in data:
        data = {"steps": [data]}
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
        raise ConfigError("stored recipe: neither a step list nor a {steps: [...]} mapping")
    steps = [s for s in data.pop("steps") if isinstance(s, dict) and "method" in s]
    return steps, data


def run_label(recipe: Recipe, data: object = None, steps: object = None) -> str:
    """A results row's label: the recipe's, and for a training run ``[data, N steps]``."""
    return label(recipe) + (f" [{data}, {steps} steps]" if steps is not None else "")


def stored_label(text: str) -> str:
    """The label of a stored recipe as today's configs write it (``run_label``)."""
    steps, run = from_stored(text)
    return run_label([config_from_dict(s) for s in steps], run.get("data"), (run.get("train") or {}).get("steps"))


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
