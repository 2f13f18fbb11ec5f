"""Save a (possibly compressed) model directory atomically, and load it back.

A model with only standard modules is saved with ``save_pretrained``: an ordinary
Hugging Face directory. A model holding efflm modules (e.g. ``QuantLinear``) is saved as
``config.json`` + tokenizer + ``model.safetensors`` (the packed buffers, as stored) +
``efflm.json`` (the recipe and, per replaced module, the arguments that rebuild its shell).
Either way the directory appears only when complete: written to a temporary sibling, then
renamed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_model

from efflm.core.atomic import atomic_dir
from efflm.core.errors import EfflmError
from efflm.models.arch import set_module
from efflm.nn import efflm_modules, module_class


def _custom_modules(model: torch.nn.Module) -> dict[str, dict]:
    return {name: {"type": type(m).__name__, "args": m.spec()} for name, m in efflm_modules(model).items()}


def _write(model: torch.nn.Module, tokenizer: Any, out: Path, recipe_yaml: str) -> None:
    modules = _custom_modules(model)
    if not modules:
        model.save_pretrained(out)
    else:
        model.config.save_pretrained(out)
        save_model(model, str(out / "model.safetensors"))
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    (out / "efflm.json" if modules else out / "efflm-recipe.json").write_text(
        json.dumps({"recipe": recipe_yaml, "modules": modules}, indent=1)
    )


def save(model: torch.nn.Module, tokenizer: Any, out: str | Path, recipe_yaml: str = "") -> Path:
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise EfflmError(f"output exists: {out} (choose another --out)")
    with atomic_dir(out, replace=True) as tmp:  # fails, deleting nothing, if out appeared
        _write(model, tokenizer, tmp, recipe_yaml)
    return out


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def load_compressed(path: Path) -> tuple[torch.nn.Module, Any]:
    """Rebuild a model saved with efflm modules: config -> shells -> strict state load."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from efflm.models.file_checks import check_safetensors

    meta = json.loads((path / "efflm.json").read_text())
    files = _weight_files(path)
    for f in files:
        check_safetensors(f)
    config = AutoConfig.from_pretrained(path)
    dtype = getattr(config, "dtype", None) or torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    for name, entry in meta["modules"].items():
        try:
            cls = module_class(entry["type"])
        except EfflmError as e:
            raise EfflmError(f"{path}: {e}") from None
        set_module(model, name, cls.from_spec(entry["args"]))
    expected = set(model.state_dict())
    loaded, unexpected = set(), []
    for f in files:  # one shard in memory at a time
        part = load_file(str(f))
        unexpected += [k for k in part if k not in expected]
        model.load_state_dict({k: v for k, v in part.items() if k in expected}, strict=False)
        loaded |= set(part)
        del part
    shared: dict[int, set[str]] = {}  # names of one tied tensor: the file holds it under one of them
    for k, v in model.state_dict().items():
        if v.numel():
            shared.setdefault(v.data_ptr(), set()).add(k)
    aliases = {k: names for names in shared.values() for k in names}
    missing = {k for k in expected - loaded if not (aliases.get(k, set()) & loaded)}
    missing = missing - _relink_tied(model, missing)
    if unexpected or [k for k in missing if not k.endswith("lm_head.weight")]:
        raise EfflmError(
            f"{path}: weights do not match the saved layout ({len(missing)} missing, "
            f"{len(unexpected)} unexpected tensors)"
        )
    if not efflm_modules(model, "embedding"):
        model.tie_weights()
    return model, AutoTokenizer.from_pretrained(path)


def _weight_files(path: Path) -> list[Path]:
    """The safetensors files of a saved model: ``model.safetensors`` or the shards its index names."""
    from efflm.models.shards import INDEX

    index = path / INDEX
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise EfflmError(f"{index}: not a valid safetensors index") from None
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise EfflmError(f"{path}: shard {missing[0]} named by {INDEX} is missing")
        return [path / n for n in names]
    if not (path / "model.safetensors").is_file():
        raise EfflmError(f"{path}: missing model.safetensors")
    return [path / "model.safetensors"]


def _relink_tied(model: torch.nn.Module, missing: set[str]) -> set[str]:
    """Re-share the codes of an embedding module tied to its lm_head (the file holds them once)."""
    relinked = set()
    for name, m in efflm_modules(model, "embedding").items():
        if getattr(m, "tied_to", None):
            head = model.get_submodule(m.tied_to)
            for buf in ("qweight", "scales"):
                if f"{name}.{buf}" in missing:
                    setattr(m, buf, getattr(head, buf))
                else:
                    setattr(head, buf, getattr(m, buf))
                relinked |= {f"{name}.{buf}", f"{m.tied_to}.{buf}"}
    return relinked
