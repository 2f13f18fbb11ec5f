"""Load a model and apply a recipe: the one path shared by bench workers, compress and eval."""
from __future__ import annotations

from typing import Any

from efflm.core import recipe as recipes
from efflm.methods import check_for_model, get


def validate(model_spec: str, recipe: recipes.Recipe) -> Any:
    """Check every step against the model's config (no weights loaded); return that config."""
    from efflm.models.load import model_config

    hf_config = model_config(model_spec)
    for cfg in recipe:
        hf_config = check_for_model(hf_config, cfg)
    return hf_config


CALIB_SAMPLES, CALIB_LEN = 8, 512  # default calibration: 8 windows of 512 tokens


def load_and_apply(model_spec: str, recipe: recipes.Recipe, calib_samples: int = CALIB_SAMPLES,
                   calib_len: int = CALIB_LEN) -> tuple[Any, Any]:
    """Validate, load, draw calibration windows if any step needs them, apply every step."""
    from efflm.data.text import calibration_windows
    from efflm.io.load import load

    validate(model_spec, recipe)
    model, tok = load(model_spec)
    calib = None
    if recipe and recipes.needs_calibration(recipe):
        calib = calibration_windows(tok, calib_samples, calib_len, seed=0)
    for cfg in recipe:
        model = get(cfg.method).apply(model, cfg, calib)
    return model.eval(), tok
