"""Recipe steps' ``ignore`` and ``targets`` (efflm.core.selection): which decoder Linears a step
changes, checked against the model's module names before any work; every method that changes
Linears one by one honours them."""

import pytest
import torch

from efflm import pipeline
from efflm.core.errors import EfflmError
from efflm.core.selection import ModuleSelection, matches
from efflm.methods import config_from_dict, methods
from efflm.models.tiny import tiny_llama

SELECTIVE = sorted(m.name for m in methods() if issubclass(m.config_cls, ModuleSelection))
DOWN = "model.layers.1.mlp.down_proj"


def test_patterns_match_full_names_name_ends_at_a_dot_and_regexes_from_the_start():
    assert matches("down_proj", DOWN) and matches("mlp.down_proj", DOWN) and matches(DOWN, DOWN)
    assert not matches("proj", DOWN) and not matches("own_proj", DOWN)
    assert matches(r"re:model\.layers\.1\.", DOWN) and not matches(r"re:layers\.1", DOWN)


def test_every_layerwise_method_selects_and_the_default_selection_changes_no_label():
    assert SELECTIVE == sorted(m.name for m in methods() if m.layerwise)
    gptq = config_from_dict({"method": "gptq"})
    assert "ignore" not in gptq.label() and "ignore" not in gptq.to_dict() and gptq.selects(DOWN)
    chosen = config_from_dict({"method": "gptq", "targets": ["down_proj"], "ignore": ["re:model\\.layers\\.0\\."]})
    assert chosen.selects(DOWN) and not chosen.selects("model.layers.0.mlp.down_proj")
    assert not chosen.selects("model.layers.1.mlp.up_proj") and "targets=('down_proj',)" in chosen.label()


@pytest.mark.parametrize("method", SELECTIVE)
def test_an_ignored_linear_is_left_exactly_as_it_was(method):
    model, tok = tiny_llama()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    calib = torch.randint(3, 250, (4, 32), generator=torch.Generator().manual_seed(0))
    cfg = config_from_dict({"method": method, "ignore": ["down_proj"]})
    model = pipeline.get(method).apply(model, cfg, calib)
    for i in range(2):
        down = model.get_submodule(f"model.layers.{i}.mlp.down_proj")
        assert type(down) is torch.nn.Linear and torch.equal(
            down.weight, before[f"model.layers.{i}.mlp.down_proj.weight"]
        )
        gate = model.get_submodule(f"model.layers.{i}.mlp.gate_proj")
        changed = type(gate) is not torch.nn.Linear or not torch.equal(
            gate.weight, before[f"model.layers.{i}.mlp.gate_proj.weight"]
        )
        assert changed, f"{method} left gate_proj unchanged"


def test_per_module_choices_are_steps_with_targets(tmp_path):
    model, tok = tiny_llama()
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    edge = r"re:model\.layers\.(0|1)\.mlp\.down_proj"
    recipe = [
        config_from_dict({"method": "gptq", "bits": 4, "ignore": [edge]}),
        config_from_dict({"method": "gptq", "bits": 8, "targets": [edge]}),
    ]
    out, _ = pipeline.load_and_apply(str(tmp_path / "m"), recipe, 4, 32)
    assert out.get_submodule("model.layers.0.mlp.down_proj").bits == 8
    assert out.get_submodule("model.layers.1.mlp.down_proj").bits == 8
    assert out.get_submodule("model.layers.1.mlp.up_proj").bits == 4


@pytest.mark.parametrize(
    "step, message",
    [
        ({"ignore": ["o_projection"]}, "ignore pattern 'o_projection' matches no module of this model"),
        ({"targets": ["re:model\\.layers\\.7\\."]}, "targets pattern .* matches no module"),
        ({"targets": ["re:("]}, "bad regular expression"),
        ({"targets": ["down_proj"], "ignore": ["re:model"]}, "leave no module to change"),
    ],
)
def test_a_selection_that_names_nothing_is_one_line_before_any_work(step, message):
    with pytest.raises(EfflmError, match=message):
        pipeline.validate("tiny-llama", [config_from_dict({"method": "rtn", **step})])
