"""A model whose decoder layers stay in the checkpoint until their turn (layer-streamed compression).

``streamed(path, dtype, device)`` builds the model's modules on the meta device (no memory),
then reads only what sits outside the decoder layers — the embeddings, the final norm, the
head — and rebuilds the rotary tables. ``each_layer(model)`` is how methods visit layers: on a
streamed model it reads layer ``i``'s tensors from the safetensors shards (cast to the working
dtype, on the working device), yields it, and once the caller is done hands it to the
stream's ``sink`` (which may write its tensors out) and, if the sink says so, frees it (the
layer goes back to the meta device). Peak memory is one layer plus what the method keeps;
on an ordinary model ``each_layer`` is plain iteration.

Architecture names come from ``efflm.models.arch`` only; the sink is set by the caller (the
``io`` layer writes the compressed tensors), so this module knows nothing of file formats.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from efflm.core.errors import EfflmError
from efflm.core.memory import trim_heap
from efflm.models.arch import file_name, get_module, layout_for
from efflm.models.shards import Shards

# sink(i, layer, model) -> True to free the layer afterwards (its tensors were written elsewhere)
Sink = Callable[[int, nn.Module, nn.Module], bool]


class LayerStream:
    """Where a streamed model's layers come from and go to, and what each one cost."""

    def __init__(self, shards: Shards, dtype: torch.dtype, device: torch.device):
        self.shards, self.dtype, self.device = shards, dtype, device
        self.sink: Sink | None = None
        self.release_outside = False  # free the tensors outside the layers while layers stream (re-read at the end)
        self.released: list[tuple[nn.Module, str, str]] = []
        self.loaded: set[int] = set()
        self.done: set[int] = set()
        self.layer_seconds: dict[int, float] = {}

    def onload(self, model: nn.Module, i: int) -> nn.Module:
        layout = layout_for(model.config.model_type)
        layers = get_module(model, layout.layers)
        layer = layers[i]
        if i in self.loaded:
            return layer
        if i in self.done:
            raise EfflmError(f"decoder layer {i} was already compressed and written; a method visited it twice")
        if self.release_outside and not self.released:
            self._free_outside(model)
        prefix = f"{layout.layers}.{i}."
        state = {k: self.shards.get(prefix + k, self.dtype, self.device) for k in layer.state_dict()}
        layer.load_state_dict(state, strict=True, assign=True)
        _no_meta(layer, f"decoder layer {i}")
        self.loaded.add(i)
        return layer

    def _free_outside(self, model: nn.Module) -> None:
        """The embeddings and head go back to the meta device: the layers' inputs are computed and
        nothing until the end reads them (a tied head's alias included)."""
        prefix = layout_for(model.config.model_type).layers + "."
        for mname, module in model.named_modules():
            if mname == prefix[:-1] or mname.startswith(prefix):
                continue
            for leaf, p in list(module._parameters.items()):
                if p is not None and not p.is_meta:
                    module._parameters[leaf] = nn.Parameter(p.to("meta"), requires_grad=False)
                    self.released.append((module, leaf, f"{mname}.{leaf}" if mname else leaf))

    def restore_outside(self, model: nn.Module) -> None:
        """Read the freed tensors back from the checkpoint (a tied head is re-tied to the embeddings)."""
        for module, leaf, name in self.released:
            if name in self.shards:
                module._parameters[leaf] = nn.Parameter(self.shards.get(name, self.dtype, self.device), False)
        if getattr(model.config, "tie_word_embeddings", False):
            model.tie_weights()
        self.released.clear()

    def offload(self, model: nn.Module, i: int) -> None:
        layers = get_module(model, layout_for(model.config.model_type).layers)
        free = self.sink(i, layers[i], model) if self.sink is not None else False
        if free:
            layers[i] = layers[i].to("meta")
            self.loaded.discard(i)
            trim_heap()  # the layer's pages go back to the system, so memory stays flat over the layers
        self.done.add(i)


def stream_of(model: nn.Module) -> LayerStream | None:
    return getattr(model, "efflm_stream", None)


def each_layer(model: nn.Module) -> Iterator[tuple[int, nn.Module]]:
    """``(i, decoder layer i)`` in order; a streamed model's layer is read before it is yielded
    and handed to the stream's sink after the caller resumes (the caller must not keep it)."""
    import time

    layers = get_module(model, layout_for(model.config.model_type).layers)
    stream = stream_of(model)
    for i in range(len(layers)):
        if stream is None:
            yield i, layers[i]
            continue
        t0 = time.perf_counter()
        layer = stream.onload(model, i)
        yield i, layer
        stream.offload(model, i)
        stream.layer_seconds[i] = time.perf_counter() - t0


def finish_stream(model: nn.Module) -> None:
    """Visit the layers no method reached (a recipe whose steps skip some): each is read and
    handed to the sink like the others, so the output has every layer."""
    stream = stream_of(model)
    if stream is None:
        return
    n = len(get_module(model, layout_for(model.config.model_type).layers))
    for i in range(n):
        if i not in stream.done:
            stream.onload(model, i)
            stream.offload(model, i)
    stream.restore_outside(model)


def _no_meta(module: nn.Module, what: str) -> None:
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if t.is_meta:
            raise EfflmError(f"{what}: tensor {name!r} has no value in the checkpoint")


def streamed(
    path: Path,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    prepare: Callable[[nn.Module], nn.Module] | None = None,
) -> Any:
    """The model at ``path`` (a Hugging Face directory) with only its non-layer tensors in memory.
    ``prepare`` reshapes the empty model before any tensor is read (a layer above this one's:
    ``efflm.nn.experts.unstack_experts``, a MoE block's experts as one Linear triple each)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from efflm.models.fused import llama_config, split_names

    device = torch.device(device)
    stored = AutoConfig.from_pretrained(path)
    config = llama_config(stored)
    layout = layout_for(config)
    # Phi-3's fused rows read as Llama's tensors; Mixtral's experts under its checkpoints' names
    shards = Shards(path, split_names(stored), lambda name: file_name(layout, name))
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):  # computed buffers (RoPE tables, Gemma's embed_scale) are real
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        if prepare is not None:
            model = prepare(model)
    prefix = layout.layers + "."
    tied = bool(getattr(config, "tie_word_embeddings", False))
    head = f"{layout.lm_head}.weight"
    absent = [n for n in model.state_dict() if n not in shards and not (tied and n == head)]
    if absent:  # every tensor is checked by name now, before any layer is read
        more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
        raise EfflmError(f"{path}: tensor {absent[0]!r} is missing from the checkpoint{more}")
    for name, _ in list(model.named_parameters()):
        if name.startswith(prefix) or (tied and name == head and name not in shards):
            continue
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner)
        module._parameters[leaf] = nn.Parameter(shards.get(name, dtype, device), requires_grad=False)
    if tied:
        model.tie_weights()
    for mname, module in model.named_modules():  # computed buffers go where the model computes
        if not (mname + ".").startswith(prefix):
            for leaf, b in list(module._buffers.items()):
                if b is not None and not b.is_meta and b.device != device:
                    module._buffers[leaf] = b.to(device)
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_meta and not name.startswith(prefix):
            raise EfflmError(f"{path}: tensor {name!r} has no value in the checkpoint")
    model.eval()
    model.requires_grad_(False)
    model.efflm_stream = LayerStream(shards, dtype, device)
    return model
