"""What the prompt-compression options share: ``efflm data compress-prompt`` and
``--compress-prompt`` on ``generate`` and ``serve`` — the compressor's config, its small LM
(checked before any weights load), and the text → text function the commands apply."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

COMPRESSORS = ("selective_context", "llmlingua", "truncate")


def ratio(v: str) -> float:
    try:
        x = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {v!r}") from None
    if not x >= 1:
        raise argparse.ArgumentTypeError(f"a compression ratio must be ≥ 1, got {v}")
    return x


def compressor_config(method: str, ratio: float, unit: str | None = None, keep: str | None = None):
    from efflm.methods import config_from_dict

    extra = {"unit": unit} if method == "selective_context" and unit else {}
    if method == "truncate" and keep:
        extra["keep"] = keep
    return config_from_dict({"method": method, "ratio": ratio, **extra})


def load_scorer(model: str, recipe_file: str | None, weights: bool):
    """The small LM (and its tokenizer) a data method reads: checked before loading (a model or
    recipe that cannot load is one line), loaded only when ``weights``."""
    from efflm.core import recipe as recipes
    from efflm.models.sources import load_tokenizer
    from efflm.pipeline import load_and_apply, validate

    recipe = recipes.load(recipe_file) if recipe_file else []
    validate(model, recipe)
    if not weights:
        return None, load_tokenizer(model)
    return load_and_apply(model, recipe)


def check(a, default_model: str | None) -> None:
    """``--compress-prompt``'s small LM, checked before the serving or generating model loads."""
    if a.compress_prompt and (a.compressor_model or default_model):
        load_scorer(a.compressor_model or default_model, a.compressor_recipe, weights=False)


def prompt_compressor(a, model: Any, tok: Any, own_copy: bool) -> Callable[[str], str]:
    """``--compress-prompt`` as text → text: the prompt's last line kept whole as the question,
    the rest compressed by the small LM — ``--compressor-model``, else the model itself (or,
    with ``own_copy``, a second copy of it, for a server whose model runs on another thread)."""
    from efflm.data_methods.context import DataContext
    from efflm.data_methods.prompt_parts import split_question
    from efflm.methods import get

    cfg = compressor_config(a.compressor, a.compress_prompt)
    spec = a.compressor_model or (a.model if own_copy else None)
    small = DataContext(*load_scorer(spec, a.compressor_recipe, True)) if spec else DataContext(model, tok)
    method = get(cfg.method)
    fn = lambda text: method.apply([split_question(text)], cfg, small)[0]  # noqa: E731
    fn.label = cfg.label()
    return fn
