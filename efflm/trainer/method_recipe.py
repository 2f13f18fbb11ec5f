"""The method recipe of ``efflm finetune``: one YAML mapping of the method's fields plus an
optional ``train:`` mapping of ``TrainConfig`` fields, both checked before anything loads."""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

import yaml

from efflm.core.errors import ConfigError, EfflmError
from efflm.finetune.train import TrainConfig
from efflm.methods import MethodConfig, config_from_dict, get


def train_config_from_dict(d: dict, source: str) -> TrainConfig:
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for key, value in d.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            raise ConfigError(
                f"{source}: unknown train option {key!r}" + (f"; did you mean {close[0]!r}?" if close else "")
            )
        want = type(TrainConfig().__getattribute__(key))
        if key == "bf16":
            if not isinstance(value, bool) and value != "auto":
                raise ConfigError(f"{source}: train option bf16 must be true, false or auto, got {value!r}")
            continue
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            d[key] = float(value)
        elif not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise ConfigError(f"{source}: train option {key} must be {want.__name__}, got {value!r}")
    return TrainConfig(**d)


def read_method_recipe(path: str | Path, steps: int | None = None) -> tuple[MethodConfig, TrainConfig]:
    p = Path(path)
    if not p.is_file():
        raise EfflmError(f"method recipe not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError:
        raise ConfigError(f"{p}: not valid YAML") from None
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, dict) or "method" not in data:
        raise ConfigError(f"{p}: a method recipe is one mapping with a 'method' key (and optional 'train')")
    data = dict(data)
    train_d = data.pop("train", None) or {}
    if not isinstance(train_d, dict):
        raise ConfigError(f"{p}: 'train' must be a mapping of training options")
    cfg = config_from_dict(data)
    if get(cfg.method).family not in ("finetune", "distill"):
        raise ConfigError(f"{p}: {cfg.method} is not a fine-tuning or distillation method (see `efflm methods`)")
    if steps is not None:
        train_d["steps"] = steps
    return cfg, train_config_from_dict(dict(train_d), str(p))
