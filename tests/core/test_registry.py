import pytest

from efflm.core import recipe as recipes
from efflm.core.errors import ConfigError, EfflmError
from efflm.methods import config_from_dict, get
from efflm.models.tiny import tiny_config
from efflm.quantize.rtn import RTNConfig


def test_recipe_yaml_round_trip_keeps_order_and_values():
    text = "- method: dense\n  dtype: bfloat16\n- method: rtn\n  bits: 3\n  group_size: 32\n  symmetric: false\n"
    r = recipes.from_yaml(text)
    assert [c.method for c in r] == ["dense", "rtn"]
    assert r[1] == RTNConfig(bits=3, group_size=32, symmetric=False)
    assert recipes.from_yaml(recipes.to_yaml(r)) == r
    assert recipes.label(r) == "dense(dtype=bfloat16) + rtn(bits=3,group_size=32,symmetric=False)"
    assert RTNConfig().label() == "rtn(bits=4,group_size=64,symmetric=True)"


def test_unknown_method_suggests_closest():
    with pytest.raises(EfflmError, match="did you mean 'rtn'"):
        get("rnt")


@pytest.mark.parametrize(
    "step,msg",
    [
        ({"method": "rtn", "bits": 9}, "bits must be in 2..8"),
        ({"method": "rtn", "bits": 1}, "bits must be in 2..8"),
        ({"method": "rtn", "group_size": -5}, "group_size must be positive"),
        ({"method": "rtn", "bits": "four"}, "bits must be int"),
        ({"method": "rtn", "bits": True}, "bits must be int"),
        ({"method": "rtn", "bitz": 4}, "did you mean 'bits'"),
        ({"method": "dense", "dtype": "int3"}, "dtype must be one of"),
        ({"bits": 4}, "needs a 'method' key"),
    ],
)
def test_invalid_config_values_are_rejected(step, msg):
    with pytest.raises(ConfigError, match=msg):
        config_from_dict(step)


def test_group_size_must_divide_every_input_dimension():
    cfg = config_from_dict({"method": "rtn", "group_size": 48})
    with pytest.raises(ConfigError, match="does not divide the input dimension 64"):
        get("rtn").check(tiny_config(), cfg)


def test_bad_yaml_is_one_clear_error():
    with pytest.raises(ConfigError, match="not valid YAML"):
        recipes.from_yaml("- method: [rtn\n")
    with pytest.raises(ConfigError, match="non-empty YAML list"):
        recipes.from_yaml("")
