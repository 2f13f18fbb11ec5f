"""Helpers shared by the default-model integration tests."""

from efflm.eval.metrics import perplexity
from efflm.io.load import load
from efflm.methods import check_for_model, config_from_dict, get

SEQ, WINDOWS = 512, 4


def apply_steps(recipe_steps, calib=None):
    model, _ = load("smollm2-135m")
    for step in recipe_steps:
        cfg = config_from_dict(step)
        check_for_model(model.config, cfg)
        model = get(cfg.method).apply(model, cfg, calib)
    return model


def ppl_after(recipe_steps, ids, calib=None):
    return perplexity(apply_steps(recipe_steps, calib), ids, SEQ, WINDOWS)["ppl"]
