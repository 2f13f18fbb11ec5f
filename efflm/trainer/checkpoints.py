"""Checkpoints of a fine-tuning run: written atomically (only the latest kept), and read back by
``--resume`` only when base, method, training config and data all match the run's fingerprint."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import torch

from efflm.core import recipe as recipes
from efflm.core.atomic import atomic_dir
from efflm.core.device import move
from efflm.core.errors import EfflmError
from efflm.finetune.train import TrainConfig, TrainState
from efflm.methods import MethodConfig
from efflm.trainer.batches import Data


def base_identity(model_spec: str, recipe: recipes.Recipe) -> dict:
    from efflm.models.sources import content_hash

    h = hashlib.sha256((content_hash(model_spec) + recipes.to_yaml(recipe)).encode()).hexdigest()[:16]
    return {"spec": model_spec, "hash": h, "recipe": recipes.to_yaml(recipe), "label": recipes.label(recipe) or "dense"}


def fingerprint_of(base: dict, tune: MethodConfig, cfg: TrainConfig, data: Data, teacher: dict | None = None) -> str:
    parts = [base["hash"], tune.to_dict(), cfg.to_dict(), data.fingerprint] + ([teacher["hash"]] if teacher else [])
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def latest_checkpoint(out: Path) -> Path | None:
    cks = sorted(
        out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]) if p.name.split("-")[1].isdigit() else -1
    )
    return cks[-1] if cks else None


def _own(p: torch.Tensor) -> torch.Tensor:
    """``p`` as saved: itself (no copy: a full model's checkpoint would double its memory), or
    a compact copy when it is a view into a larger storage (torch.save writes whole storages);
    a GPU tensor as a CPU copy (a GPU run's checkpoint is a CPU run's, loadable anywhere)."""
    t = p.detach()
    if t.device.type != "cpu":
        return t.cpu()
    return t if t.untyped_storage().nbytes() == t.numel() * t.element_size() else t.clone()


def write_checkpoint(out: Path, model, state: TrainState, updater, hooks, fingerprint: str) -> None:
    tensors = {n: _own(p) for n, p in model.named_parameters() if p.requires_grad or "lora_A" in n}
    target = out / f"checkpoint-{state.step}"
    if target.exists():
        return
    with atomic_dir(target, replace=True) as tmp:
        torch.save(
            {
                "tensors": tensors,
                "updater": move(updater.state_dict(), "cpu"),
                "hooks": move(hooks.state_dict(), "cpu"),
                "state": dataclasses.asdict(state),
                "fingerprint": fingerprint,
            },
            tmp / "state.pt",
        )
    for old in out.glob("checkpoint-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)


def read_checkpoint(out: Path, fingerprint: str) -> dict:
    ck = latest_checkpoint(out)
    if ck is None or not (ck / "state.pt").is_file():
        raise EfflmError(f"{out}: no checkpoint to resume from")
    blob = torch.load(ck / "state.pt", weights_only=True, map_location="cpu")
    if blob["fingerprint"] != fingerprint:
        raise EfflmError(
            f"{out}: --resume with a different base, method, training config or data than the checkpoint's"
        )
    return blob
