"""The shared layer-by-layer calibration runner (GPTQ, AWQ, SparseGPT, Wanda and friends).

1. Run the calibration batch up to the first decoder layer and keep its inputs.
2. For each layer: hook the inputs of its Linears into per-Linear observers (a Hessian,
   activation norms, ...), run the layer until the last observer has its input (the last
   Linear itself and what follows it are skipped), let the method ``solve`` the layer (it
   may replace Linears), then run the now-compressed layer to get the next layer's inputs.

Memory stays at one layer's activations for the calibration batch, not the model's.
Architecture names come from ``efflm.models.arch`` only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn as nn

from efflm.core.errors import EfflmError
from efflm.core.progress import progress
from efflm.models.arch import decoder_layers, layout_for, set_module
from efflm.models.streaming import each_layer
from efflm.nn.experts import route_all


class Observer(Protocol):
    def add(self, x: torch.Tensor) -> None: ...


class _Stop(Exception):
    pass


def _layer0_inputs(model: nn.Module, calib: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, dict]]:
    captured: list[tuple[torch.Tensor, dict]] = []

    def grab(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append((hidden, {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        raise _Stop

    layer0 = decoder_layers(model)[0]
    handle = layer0.register_forward_pre_hook(grab, with_kwargs=True)
    device = model.get_submodule(layout_for(model.config.model_type).embed).weight.device
    try:
        for batch in calib.split(batch_size):
            try:
                model(batch.to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return captured


def _out(y: Any) -> torch.Tensor:
    return y[0] if isinstance(y, tuple) else y


def first_layer_inputs(model: nn.Module, calib: torch.Tensor, batch_size: int = 4) -> list[tuple[torch.Tensor, dict]]:
    """(hidden states, keyword arguments) entering the first decoder layer, per batch of ``calib``."""
    with torch.no_grad():
        return _layer0_inputs(model, calib, batch_size)


def layer_output(layer: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """The hidden states a decoder layer returns for these inputs."""
    return _out(layer(hidden, **kwargs))


def check_finite(name: str, x: torch.Tensor) -> None:
    if not torch.isfinite(x.sum()):  # one read: a NaN or inf anywhere makes the sum one
        raise EfflmError(f"NaN or inf in the calibration activations entering {name}")


@torch.no_grad()
def run(
    model: nn.Module,
    calib: torch.Tensor,
    observe: Callable[[str, nn.Linear], Observer],
    solve: Callable[[int, nn.Module, dict[str, Observer]], None],
    batch_size: int = 4,
    desc: str = "calibrate",
    one_pass: bool = False,
    finish: Callable[[int, nn.Module], None] | None = None,
    select: Callable[[str], bool] | None = None,
) -> nn.Module:
    """Calibrate ``model`` layer by layer; ``solve(i, layer, observers)`` compresses layer ``i``.

    ``observers`` maps each Linear's path to its observer; Linears reading the same input
    (q/k/v, gate/up) share one observer, fed once.

    ``one_pass`` (GPTQ's and SparseGPT's "true sequential" order): the whole calibration batch
    runs through each layer once; as each input group is reached, its observer is fed and
    ``solve`` gets that group alone, so the Linears after it see the inputs the already
    compressed ones produce, and that one forward also yields the next layer's inputs.
    ``solve`` must then change the group's weights in place (the forward is under way), and
    ``finish(i, layer)`` — in either mode, after the layer's output is computed — may swap
    modules (e.g. pack the compressed weights).

    ``select(path)`` (a step's ``ignore``/``targets``): only the Linears it accepts are observed
    and given to ``solve``; an input group with none of them is not observed at all.
    """
    if calib is None or calib.ndim != 2 or calib.shape[0] < 1:
        raise EfflmError("this method needs calibration data: a [samples, tokens] batch of token ids")
    with route_all(model):  # a MoE block's experts each see every calibration token
        return _run(model, calib, observe, solve, batch_size, desc, one_pass, finish, select)


def _run(model, calib, observe, solve, batch_size, desc, one_pass, finish, select) -> nn.Module:
    layout = layout_for(model.config)
    inputs = _layer0_inputs(model, calib, calib.shape[0] if one_pass else batch_size)
    for i, layer in progress(each_layer(model), desc=desc, total=len(decoder_layers(model))):
        observers: dict[str, Observer] = {}
        hooks, seen, groups = [], set(), 0
        for group in layout.input_groups:
            paths = [f"{layout.layers}.{i}.{name}" for name in group]
            paths = [p for p in paths if select is None or select(p)]
            if not paths:
                continue
            groups += 1
            obs = observe(paths[0], layer.get_submodule(paths[0].removeprefix(f"{layout.layers}.{i}.")))
            observers.update({p: obs for p in paths})

            def hook(module, args, obs=obs, paths=paths):
                check_finite(paths[0], args[0])
                obs.add(args[0])
                if one_pass:
                    solve(i, layer, {p: obs for p in paths})
                    return
                seen.add(paths[0])
                if len(seen) == groups:
                    raise _Stop  # every observer has its input: the rest of the layer is not needed

            hooks.append(layer.get_submodule(group[0]).register_forward_pre_hook(hook))  # the group's shared input
        try:
            if one_pass:
                inputs = [(_out(layer(hidden, **kwargs)), kwargs) for hidden, kwargs in inputs]
            else:
                for hidden, kwargs in inputs:
                    seen.clear()
                    try:
                        layer(hidden, **kwargs)
                    except _Stop:
                        pass
        finally:
            for h in hooks:
                h.remove()
        if not one_pass:
            solve(i, layer, observers)
            inputs = [(_out(layer(hidden, **kwargs)), kwargs) for hidden, kwargs in inputs]
        if finish is not None:
            finish(i, layer)
    return model


def shared_groups(observers: dict[str, Observer]) -> list[list[str]]:
    """Paths of the Linears that share one observer (q/k/v, gate/up) and one owner module: solved as
    one stacked matrix. A MoE block's experts share an observer but each is solved alone (a stack of
    every expert would hold all their weights twice)."""
    groups: dict[tuple[int, str], list[str]] = {}
    for path, obs in observers.items():
        groups.setdefault((id(obs), path.rsplit(".", 1)[0]), []).append(path)
    return list(groups.values())


def hessian_groups(observers: dict[str, Any], take: bool = False):
    """``(paths, H)`` of each stacked solve (``shared_groups``). ``take``: the last solve on an
    observer gets its Hessian to consume (``Hessian.take``); earlier ones (other experts) a copy."""
    groups = shared_groups(observers)
    last = {id(observers[paths[0]]): j for j, paths in enumerate(groups)}
    for j, paths in enumerate(groups):
        obs = observers[paths[0]]
        if last[id(obs)] != j:
            yield paths, obs.H.clone()
        else:
            yield paths, obs.take() if take else obs.H


def run_hessian_groups(
    model: nn.Module,
    calib: torch.Tensor,
    solve: Callable[[list[str], list[nn.Linear], torch.Tensor], dict[str, nn.Module]],
    desc: str,
    select: Callable[[str], bool] | None = None,
) -> nn.Module:
    """``run`` in one pass with a Hessian per input group, for GPTQ-like methods:
    ``solve(paths, linears, H)`` quantizes one group (updating the Linears' weights in place, as
    the forward under way needs) and returns their replacement modules, installed after the layer."""
    from efflm.calib.hessian import Hessian

    pending: dict[str, nn.Module] = {}

    def each_group(i: int, layer: nn.Module, observers: dict) -> None:
        for paths, H in hessian_groups(observers):
            pending.update(solve(paths, [model.get_submodule(p) for p in paths], H))

    def finish(i: int, layer: nn.Module) -> None:
        for path, m in pending.items():
            set_module(model, path, m)
        pending.clear()

    hessian = lambda path, linear: Hessian(linear.in_features, stats=False)  # noqa: E731
    return run(model, calib, hessian, each_group, desc=desc, one_pass=True, finish=finish, select=select)


def note(model: nn.Module, text: str) -> None:
    """Record something a user must know about this run (shown in the result row)."""
    notes = getattr(model, "efflm_notes", [])
    notes.append(text)
    model.efflm_notes = notes
