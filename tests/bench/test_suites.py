import pytest

from efflm.bench.suites import SUITES
from efflm.methods import check_for_model


@pytest.mark.parametrize("name", list(SUITES))
def test_every_suite_recipe_fits_the_default_model(name):
    """A recipe a suite would fail on after hours of other rows fails here, from the config alone."""
    from efflm.models.sources import model_config

    base = model_config("smollm2-135m")
    recipes = SUITES[name]()
    assert recipes
    for recipe in recipes:
        hf = base
        for cfg in recipe:
            hf = check_for_model(hf, cfg)
