"""Write a layer-streamed model's output as it is made: one safetensors shard per decoder layer.

``LayerWriter`` is the stream's sink (``efflm.models.streaming``): when a layer is done it
writes that layer's tensors (compressed modules' packed buffers, as stored) to
``model-000{i+1}-of-...safetensors`` and lets the stream free the layer. ``close`` writes what
lies outside the layers (embeddings, final norm, head) as the last shard, the index, the
config, the tokenizer and ``efflm.json`` — the same directory ``efflm.io.save.save`` writes for
a model held whole, sharded, so ``efflm.io.load`` reads either.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from efflm.models.arch import layout_for
from efflm.models.shards import INDEX
from efflm.nn import efflm_modules


def shard_name(k: int, n: int) -> str:
    return f"model-{k:05d}-of-{n:05d}.safetensors"


def _cpu_state(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    out, seen = {}, {}
    for name, t in module.state_dict().items():
        key = (t.data_ptr(), t.numel(), t.dtype)
        if key in seen:  # a tensor shared inside the module (tied) is stored once
            continue
        seen[key] = name
        out[prefix + name] = t.detach().to("cpu").contiguous()
    return out


class LayerWriter:
    def __init__(self, out: Path, n_layers: int):
        self.out, self.n_shards = Path(out), n_layers + 1
        self.weight_map: dict[str, str] = {}
        self.modules: dict[str, dict] = {}
        self.total_size = 0

    def _write(self, k: int, tensors: dict[str, torch.Tensor]) -> None:
        name = shard_name(k, self.n_shards)
        save_file(tensors, str(self.out / name), metadata={"format": "pt"})
        self.weight_map.update(dict.fromkeys(tensors, name))
        self.total_size += sum(t.numel() * t.element_size() for t in tensors.values())

    def __call__(self, i: int, layer: torch.nn.Module, model: Any) -> bool:
        prefix = f"{layout_for(model.config.model_type).layers}.{i}."
        self._write(i + 1, _cpu_state(layer, prefix))
        for name, m in efflm_modules(layer).items():
            self.modules[prefix + name] = {"type": type(m).__name__, "args": m.spec()}
        return True

    def close(self, model: Any, tokenizer: Any, recipe_yaml: str, stream: dict | None = None) -> None:
        """Write the tensors outside the layers, the index, config, tokenizer and efflm.json."""
        layers = layout_for(model.config.model_type).layers + "."
        for name, m in efflm_modules(model).items():
            if not name.startswith(layers):
                self.modules[name] = {"type": type(m).__name__, "args": m.spec()}
        # tied tensors (embeddings and head) are stored once, under the name the whole-model writer
        # keeps: safetensors' save_model the first in order, save_pretrained the embedding's
        head = layout_for(model.config.model_type).lm_head + ".weight"
        pick = min if self.modules else (lambda names: next((n for n in names if n != head), names[0]))
        groups: dict[tuple, list[str]] = {}
        for name, t in model.state_dict(keep_vars=True).items():
            if not name.startswith(layers) and not t.is_meta:
                groups.setdefault((t.data_ptr(), t.numel(), t.dtype), []).append(name)
        state = model.state_dict()
        rest = {pick(names): state[pick(names)].detach().to("cpu").contiguous() for names in groups.values()}
        self._write(self.n_shards, rest)
        index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(self.weight_map.items()))}
        (self.out / INDEX).write_text(json.dumps(index, indent=1))
        model.config.save_pretrained(self.out)
        if tokenizer is not None:
            tokenizer.save_pretrained(self.out)
        name = "efflm.json" if self.modules else "efflm-recipe.json"
        meta = {"recipe": recipe_yaml, "modules": self.modules, **({"stream": stream} if stream else {})}
        (self.out / name).write_text(json.dumps(meta, indent=1))
