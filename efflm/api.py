"""The Python API in four calls: ``compress``, ``evaluate``, ``generate``, ``save``.

    import efflm
    model, tok = efflm.compress("tiny-llama", [{"method": "rtn", "bits": 4, "group_size": 32}])
    print(efflm.evaluate(model, tok))          # {'ppl': ..., 'bytes': ..., ...}
    print(efflm.generate(model, tok, "Once upon a time", max_new_tokens=20))
    efflm.save(model, tok, "out/tiny-w4")      # an efflm directory; efflm.compress("out/tiny-w4") reloads it

Each is a thin wrapper over what the CLI runs (the same validation, pipeline and metrics).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from efflm.core import recipe as recipes
from efflm.methods import MethodConfig, config_from_dict
from efflm.pipeline import CALIB_LEN, CALIB_SAMPLES, load_and_apply


def as_recipe(recipe: Any) -> recipes.Recipe:
    """A recipe from a YAML file path, a YAML string, a list of dicts or configs, or None (no steps)."""
    if recipe is None:
        return []
    if isinstance(recipe, Path) or (isinstance(recipe, str) and recipe.endswith((".yaml", ".yml"))):
        return recipes.load(recipe)
    if isinstance(recipe, str):
        return recipes.from_yaml(recipe)
    if isinstance(recipe, (dict, MethodConfig)):
        recipe = [recipe]
    return [step if isinstance(step, MethodConfig) else config_from_dict(step) for step in recipe]


def compress(
    model: str = "smollm2-135m",
    recipe: Any = None,
    calib_samples: int = CALIB_SAMPLES,
    calib_len: int = CALIB_LEN,
    *,
    calib_file: str | None = None,
) -> tuple[Any, Any]:
    """Load a model spec and apply a recipe: ``(model, tokenizer)``, checked before any work;
    ``calib_file`` (a .txt or .jsonl file) replaces the built-in calibration text."""
    return load_and_apply(model, as_recipe(recipe), calib_samples, calib_len, calib_file=calib_file)


def evaluate(model: Any, tok: Any, text: str | None = None, seq_len: int = 512, windows: int = 4) -> dict:
    """Perplexity (on ``text``, default the Shakespeare evaluation split) and stored bytes."""
    from efflm.datasets import text as texts
    from efflm.eval.metrics import model_bytes, perplexity

    n = seq_len * windows
    ids = texts.prefix_tokens(tok, text, n) if text is not None else texts.eval_tokens(tok, n)
    return {**perplexity(model, ids, seq_len, windows), "bytes": model_bytes(model)}


def generate(model: Any, tok: Any, prompt: str, max_new_tokens: int = 64, chat: bool = False, **sampling) -> str:
    """Text after ``prompt`` on efflm's decode path (greedy unless ``temperature`` > 0; ``top_k``,
    ``top_p``, ``stop``, ``seed`` as in ``efflm generate``)."""
    from efflm.inference.generate import SamplingConfig
    from efflm.inference.generate import generate as run

    if "stop" in sampling:
        sampling["stop"] = tuple(sampling["stop"])
    (res,), _ = run(model, tok, [prompt], SamplingConfig(max_new_tokens=max_new_tokens, **sampling), chat=chat)
    return res.text


def save(model: Any, tok: Any, out: str | Path, recipe: Any = None) -> Path:
    """Write the model as an efflm directory (atomically; ``out`` must not exist)."""
    from efflm.io.save import save as write

    return write(model, tok, out, recipes.to_yaml(as_recipe(recipe)) if recipe is not None else "")
