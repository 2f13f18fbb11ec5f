"""Adapter directories in peft's format, written atomically and read back with checks first.

A directory holds ``adapter_config.json`` (peft's fields; ``peft.PeftModel.from_pretrained``
reads it), ``adapter_model.safetensors`` (peft's key names: ``base_model.model.<path>.lora_A.weight``,
``lora_magnitude_vector``, ``ia3_l``, ``lora_E``, ``adaption_prompt``/``adaption_gate``, or a
bare ``prompt_embeddings``) and ``efflm_adapter.json``: the exact efflm config (methods
peft lacks are saved as its nearest type and say so here), the base model's identity (spec,
content hash, compress recipe), the training config and final metrics.

Loading checks everything it can before any weight is read: the peft type is one efflm
knows, the base's hash (when the adapter was made by efflm) and every tensor's shape against
the adapter efflm would build on this base.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from efflm.core.atomic import atomic_dir
from efflm.core.errors import EfflmError
from efflm.core.registry import MethodConfig, config_from_dict, get

PREFIX = "base_model.model."
TENSOR_NAMES = (
    "lora_A.weight",
    "lora_B.weight",
    "lora_magnitude_vector",
    "ia3_l",
    "lora_A",
    "lora_B",
    "lora_E",
    "prompt_embeddings",
    "adaption_prompt",
    "adaption_gate",
)
NEAREST_NOTE = {
    "lora_fa": "saved as peft LoRA at the same rank (peft has no LoRA-FA type; A is stored as initialised)",
    "dylora": "saved as peft LoRA truncated to save_rank (peft has no DyLoRA type)",
    "qlora": "saved as peft LoRA; the base is the NF4-quantized model (recipe nf4 at this block size)",
}


def is_adapter_tensor(name: str) -> bool:
    return any(name == t or name.endswith("." + t) for t in TENSOR_NAMES)


def _peft_key(name: str) -> str:
    return "prompt_embeddings" if name.endswith("prompt_embeddings") else PREFIX + name


def adapter_state(model: torch.nn.Module, config: MethodConfig) -> dict[str, torch.Tensor]:
    """The adapter's tensors under peft's key names (a DyLoRA adapter at its save rank)."""
    rank = getattr(config, "save_rank", 0)
    out = {}
    for name, p in model.named_parameters():
        if not is_adapter_tensor(name):
            continue
        t = p.detach()
        if rank and name.endswith("lora_A.weight"):
            t = t[:rank]
        elif rank and name.endswith("lora_B.weight"):
            t = t[:, :rank]
        out[_peft_key(name)] = t.float().cpu().contiguous()  # a GPU run writes the CPU run's file
    return out


def save_adapter(
    model: torch.nn.Module, config: MethodConfig, out: Path, meta: dict[str, Any], into_existing: bool = False
) -> Path:
    """Write the adapter directory atomically (it appears complete or not at all); with
    ``into_existing`` (a training run's directory) each file is replaced atomically."""
    out = Path(out)
    if out.exists() and not into_existing:
        raise EfflmError(f"output exists: {out} (choose another --out)")
    peft_cfg = {
        **config.peft_config(model.config),
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": meta.get("base", {}).get("spec"),
        "inference_mode": True,
    }
    info = {"efflm_config": config.to_dict(), **meta}
    if config.method in NEAREST_NOTE:
        info["note"] = NEAREST_NOTE[config.method]
    state = adapter_state(model, config)

    def write(d: Path) -> None:
        save_file(state, str(d / "adapter_model.safetensors"), metadata={"format": "pt"})
        (d / "adapter_config.json").write_text(json.dumps(peft_cfg, indent=1))
        (d / "efflm_adapter.json").write_text(json.dumps(info, indent=1, default=str))

    if not out.exists():
        with atomic_dir(out, replace=True) as tmp:
            write(tmp)
        return out
    with atomic_dir(out / ".adapter-files", replace=True) as tmp:
        write(tmp)
    staged = out / ".adapter-files"
    for f in ("adapter_model.safetensors", "efflm_adapter.json", "adapter_config.json"):  # config last: a
        os.replace(staged / f, out / f)  # directory with adapter_config.json is a complete adapter
    staged.rmdir()
    return out


def read_adapter_config(path: str | Path) -> tuple[MethodConfig, dict]:
    """The efflm config of an adapter directory (efflm's or peft's) and efflm's metadata."""
    path = Path(path)
    cfg_file = path / "adapter_config.json"
    if not cfg_file.is_file() or not (path / "adapter_model.safetensors").is_file():
        raise EfflmError(f"{path}: not an adapter directory (needs adapter_config.json and adapter_model.safetensors)")
    try:
        peft_cfg = json.loads(cfg_file.read_text())
    except ValueError:
        raise EfflmError(f"{cfg_file}: not valid JSON") from None
    meta_file = path / "efflm_adapter.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    if "efflm_config" in meta:
        return config_from_dict(meta["efflm_config"]), meta
    return _from_peft(peft_cfg, path), meta


def _from_peft(c: dict, path: Path) -> MethodConfig:
    kind = c.get("peft_type")
    targets = c.get("target_modules")
    if isinstance(targets, str):
        targets = [targets]
    if kind == "LORA":
        unsupported = [k for k in ("use_rslora", "lora_bias", "fan_in_fan_out") if c.get(k)]
        if unsupported or c.get("bias", "none") != "none" or c.get("modules_to_save"):
            raise EfflmError(f"{path}: LoRA options efflm does not support: {unsupported or 'bias/modules_to_save'}")
        if c.get("rank_pattern") or c.get("alpha_pattern"):
            raise EfflmError(f"{path}: per-module rank/alpha patterns are not supported")
        return config_from_dict(
            {
                "method": "dora" if c.get("use_dora") else "lora",
                "r": c["r"],
                "alpha": c.get("lora_alpha", 8),
                "dropout": c.get("lora_dropout", 0.0),
                "target_modules": targets,
            }
        )
    if kind == "IA3":
        return config_from_dict(
            {"method": "ia3", "target_modules": targets, "feedforward_modules": c.get("feedforward_modules") or []}
        )
    if kind == "PROMPT_TUNING":
        return config_from_dict({"method": "prompt_tuning", "n_virtual": c["num_virtual_tokens"], "init": "random"})
    if kind == "PREFIX_TUNING":
        if c.get("prefix_projection"):
            raise EfflmError(f"{path}: prefix tuning with prefix_projection is not supported")
        return config_from_dict({"method": "prefix_tuning", "n_virtual": c["num_virtual_tokens"]})
    if kind == "ADAPTION_PROMPT":
        return config_from_dict(
            {"method": "llama_adapter", "adapter_len": c["adapter_len"], "adapter_layers": c["adapter_layers"]}
        )
    if kind == "ADALORA":
        return config_from_dict(
            {
                "method": "adalora",
                "init_r": c.get("init_r", c.get("r")),
                "target_r": min(c.get("target_r", 8), c.get("init_r", c.get("r"))),
                "alpha": c.get("lora_alpha", 8),
                "target_modules": targets,
            }
        )
    raise EfflmError(f"{path}: peft type {kind!r} is not supported by efflm")


def check_base(path: Path, meta: dict, base_hash: str | None) -> None:
    """An adapter made by efflm names the base it was trained on; refuse another one."""
    want = meta.get("base", {}).get("hash")
    if want and base_hash and want != base_hash:
        raise EfflmError(
            f"{path}: adapter made for another base (base hash {want}, this model {base_hash}; "
            f"it was trained on {meta['base'].get('label', meta['base'].get('spec'))})"
        )


def load_adapter(
    model: torch.nn.Module, path: str | Path, base_hash: str | None = None, trainable: bool = False
) -> tuple[Any, MethodConfig]:
    """Apply the adapter's method to ``model`` and load its tensors (shapes checked first);
    ``trainable`` leaves the tensors the method trains trainable (to continue training)."""
    path = Path(path)
    config, meta = read_adapter_config(path)
    check_base(path, meta, base_hash)
    from efflm.core.registry import check_for_model

    check_for_model(model.config, config)
    model = get(config.method).apply(model, config, None)
    if getattr(config, "save_rank", 0):
        from efflm.finetune.dylora import set_rank

        set_rank(model, config.save_rank)
    want = adapter_state(model, config)
    with safe_open(str(path / "adapter_model.safetensors"), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    missing, unexpected = set(want) - set(shapes), set(shapes) - set(want)
    bad = [k for k in set(want) & set(shapes) if tuple(want[k].shape) != shapes[k]]
    if missing or unexpected or bad:
        detail = (sorted(missing) or sorted(unexpected) or bad)[0]
        raise EfflmError(
            f"{path}: adapter does not fit this base ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(bad)} mis-shaped tensors, e.g. {detail})"
        )
    state = load_file(str(path / "adapter_model.safetensors"))
    params = dict(model.named_parameters())
    rank = getattr(config, "save_rank", 0)
    with torch.no_grad():
        for name, p in params.items():
            if is_adapter_tensor(name):
                t = state[_peft_key(name)].to(p.dtype)
                if rank and name.endswith("lora_A.weight"):
                    p[:rank].copy_(t)
                elif rank and name.endswith("lora_B.weight"):
                    p[:, :rank].copy_(t)
                else:
                    p.copy_(t)
    if not trainable:
        model.requires_grad_(False)
    return model.eval(), config
