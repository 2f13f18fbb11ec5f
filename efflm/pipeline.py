"""Load a model and apply a recipe: the one path shared by bench workers, compress and eval.

``validate`` checks everything that can be checked without the weights — every recipe step
against the model's config, and the calibration windows against the calibration text — so a
bad input fails before any work starts. A recipe of layerwise steps on a safetensors model runs
layer-streamed (``efflm.models.streaming``: one decoder layer read at a time; ``compress_streamed``
also writes each finished layer out and frees it); any other recipe loads the whole model, after
checking it fits.
"""

from __future__ import annotations

from typing import Any

from efflm.core import recipe as recipes
from efflm.core.defaults import CALIB_LEN, CALIB_SAMPLES
from efflm.core.errors import EfflmError
from efflm.methods import check_for_model, get

__all__ = ["CALIB_LEN", "CALIB_SAMPLES", "load_and_apply", "validate"]


def validate(
    model_spec: str,
    recipe: recipes.Recipe,
    calib_samples: int = CALIB_SAMPLES,
    calib_len: int = CALIB_LEN,
    *,
    calib_file: str | None = None,
) -> Any:
    """Check every step against the model's config and, if a step calibrates, that the
    calibration windows fit (no weights loaded); return the config after the recipe.
    ``calib_file`` (``.txt`` or ``.jsonl``, see ``efflm.datasets.calib_file``) replaces the
    built-in calibration text; when given it is always checked, even if no step calibrates."""
    from efflm.core.selection import check_names
    from efflm.models.arch import module_names
    from efflm.models.sources import model_config

    hf_config = model_config(model_spec)
    for cfg in recipe:
        if get(cfg.method).family == "data":
            raise EfflmError(f"{cfg.method} is a data method: run it with `efflm data` (a recipe transforms a model)")
        if get(cfg.method).family in ("finetune", "distill"):
            raise EfflmError(
                f"{cfg.method} is a {get(cfg.method).family} method: train it with `efflm finetune --method-recipe` "
                "(a compression recipe holds compression and inference steps only)"
            )
        check_names(cfg, module_names(hf_config))  # ignore/targets name modules this model has
        hf_config = check_for_model(hf_config, cfg)
    calibrates = bool(recipe) and recipes.needs_calibration(recipe)
    if calibrates or calib_file is not None:
        from efflm.datasets.calib_file import check_calib
        from efflm.models.sources import load_tokenizer

        limit = getattr(hf_config, "max_position_embeddings", None)
        if calibrates and limit and calib_len > limit:
            raise EfflmError(f"calibration length {calib_len} exceeds the model's {limit} positions")
        check_calib(load_tokenizer(model_spec), calib_samples, calib_len, calib_file)
    return hf_config


def streams(model_spec: str, recipe: recipes.Recipe) -> bool:
    """Whether ``load_and_apply`` streams this recipe layer by layer: every step is ``layerwise``
    and the weights are a safetensors directory (the default model's converted GGUF included) of a
    family stored as efflm computes it (not GPT-2: its weights are stored transposed);
    ``EFFLM_STREAM=0`` turns it off."""
    from efflm.core import settings
    from efflm.models.sources import model_config, weights_dir

    if not recipe or not settings.stream() or not all(get(c.method).layerwise for c in recipe):
        return False
    from efflm.models.fused import READ_WHOLE

    if weights_dir(model_spec) is None:
        return False
    return getattr(model_config(model_spec), "efflm_unfused_from", None) not in READ_WHOLE


def check_whole_fits(model_spec: str, recipe: recipes.Recipe) -> None:
    """A recipe that needs the whole model in float32 says so, before loading, when it cannot fit."""
    from efflm.core.memory import available_bytes
    from efflm.models.shards import parameter_count
    from efflm.models.sources import weights_dir

    path = weights_dir(model_spec)
    free = available_bytes()
    if path is None or free is None:
        return
    need = parameter_count(path) * 4
    if need > free:
        whole = [c.method for c in recipe if not get(c.method).layerwise] or ["loading it unchanged"]
        raise EfflmError(
            f"{', '.join(whole)} needs the whole model in memory: {need / 1e9:.1f} GB in float32, "
            f"{free / 1e9:.1f} GB available (layer-streamed methods: {', '.join(_layerwise())})"
        )


def _layerwise() -> list[str]:
    from efflm.methods import methods

    return [m.name for m in methods() if m.layerwise]


def load_and_apply(
    model_spec: str,
    recipe: recipes.Recipe,
    calib_samples: int = CALIB_SAMPLES,
    calib_len: int = CALIB_LEN,
    *,
    calib_file: str | None = None,
    device: Any = "cpu",
    sink: Any = None,
) -> tuple[Any, Any]:
    """Validate, load, draw calibration windows (from ``calib_file`` when given) if any step
    needs them, apply every step, on ``device``.

    A recipe whose steps are all layerwise runs on a layer-streamed model: only the layer being
    compressed is read (as float32, like a whole load, so the result is the same bit for bit).
    ``sink`` (with such a recipe only) takes each finished layer — ``efflm.io.streamed_save``
    writes it out and frees it; without one the compressed layers stay in the returned model."""
    import torch

    from efflm.core.device import resolve
    from efflm.datasets.calib_file import calib_windows

    validate(model_spec, recipe, calib_samples, calib_len, calib_file=calib_file)
    device = resolve(device)
    stream = streams(model_spec, recipe)
    if sink is not None and not stream:
        raise EfflmError("only a recipe of layerwise steps on a safetensors model can be written layer by layer")
    if stream:
        from efflm.models.sources import load_tokenizer, weights_dir
        from efflm.models.streaming import streamed
        from efflm.nn.experts import unstack_experts

        model = streamed(weights_dir(model_spec), torch.float32, device, prepare=unstack_experts)
        tok = load_tokenizer(model_spec)
        model.efflm_stream.sink = sink
        model.efflm_stream.release_outside = sink is not None  # written out: hold one layer, not the embeddings
    else:
        from efflm.io.load import load

        check_whole_fits(model_spec, recipe)
        model, tok = load(model_spec)
        model.to(device)
    calib = None
    if recipe and recipes.needs_calibration(recipe):
        calib = calib_windows(tok, calib_samples, calib_len, calib_file, seed=0)
    for cfg in recipe:
        model = get(cfg.method).apply(model, cfg, calib)
    if stream:
        from efflm.models.streaming import finish_stream

        finish_stream(model)
        model.efflm_layer_seconds = dict(model.efflm_stream.layer_seconds)
        del model.efflm_stream
    return model.eval(), tok


def compress_streamed(
    model_spec: str,
    recipe: recipes.Recipe,
    out: Any,
    calib_samples: int = CALIB_SAMPLES,
    calib_len: int = CALIB_LEN,
    *,
    calib_file: str | None = None,
    device: Any = "cpu",
) -> dict:
    """Apply a one-step layerwise recipe layer by layer, writing each finished layer to ``out``
    (an efflm directory, sharded per layer) and freeing it: peak memory is about one layer.
    The directory appears only when complete. Returns the per-layer seconds."""
    from pathlib import Path

    from efflm.core.atomic import atomic_dir
    from efflm.io.streamed_save import LayerWriter
    from efflm.models.sources import model_config

    out = Path(out)
    if out.exists() or out.is_symlink():
        raise EfflmError(f"output exists: {out} (choose another --out)")
    if len(recipe) != 1 or not streams(model_spec, recipe):
        raise EfflmError("a streamed compression takes one layerwise step on a safetensors model")
    n_layers = model_config(model_spec).num_hidden_layers
    with atomic_dir(out, replace=True) as tmp:
        writer = LayerWriter(tmp, n_layers)
        model, tok = load_and_apply(
            model_spec, recipe, calib_samples, calib_len, calib_file=calib_file, device=device, sink=writer
        )
        writer.close(model, tok, recipes.to_yaml(recipe), stream={"layer_seconds": model.efflm_layer_seconds})
    return model.efflm_layer_seconds
