"""Load a model and apply a recipe: the one path shared by bench workers, compress and eval.

``validate`` checks everything that can be checked without the weights — every recipe step
against the model's config, and the calibration windows against the calibration text — so a
bad input fails before any work starts.
"""

from __future__ import annotations

from typing import Any

from efflm.core import recipe as recipes
from efflm.core.defaults import CALIB_LEN, CALIB_SAMPLES
from efflm.core.errors import EfflmError
from efflm.methods import check_for_model, get

__all__ = ["CALIB_LEN", "CALIB_SAMPLES", "load_and_apply", "validate"]


def validate(
    model_spec: str, recipe: recipes.Recipe, calib_samples: int = CALIB_SAMPLES, calib_len: int = CALIB_LEN
) -> Any:
    """Check every step against the model's config and, if a step calibrates, that the
    calibration windows fit (no weights loaded); return the config after the recipe."""
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
        hf_config = check_for_model(hf_config, cfg)
    if recipe and recipes.needs_calibration(recipe):
        from efflm.datasets.text import check_calibration
        from efflm.models.sources import load_tokenizer

        limit = getattr(hf_config, "max_position_embeddings", None)
        if limit and calib_len > limit:
            raise EfflmError(f"calibration length {calib_len} exceeds the model's {limit} positions")
        check_calibration(load_tokenizer(model_spec), calib_samples, calib_len)
    return hf_config


def load_and_apply(
    model_spec: str, recipe: recipes.Recipe, calib_samples: int = CALIB_SAMPLES, calib_len: int = CALIB_LEN
) -> tuple[Any, Any]:
    """Validate, load, draw calibration windows if any step needs them, apply every step."""
    from efflm.datasets.text import calibration_windows
    from efflm.io.load import load

    validate(model_spec, recipe, calib_samples, calib_len)
    model, tok = load(model_spec)
    calib = None
    if recipe and recipes.needs_calibration(recipe):
        calib = calibration_windows(tok, calib_samples, calib_len, seed=0)
    for cfg in recipe:
        model = get(cfg.method).apply(model, cfg, calib)
    return model.eval(), tok
