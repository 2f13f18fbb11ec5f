"""Every option documented where users look: each config field's help text, `efflm methods NAME`,
and the options reference in docs/methods.md rendered from the same fields."""

import dataclasses
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

import efflm
from efflm.cli import main
from efflm.core import fields
from efflm.finetune.train import TrainConfig
from efflm.methods import get, methods

ROOT = Path(efflm.__file__).parent.parent
CONFIGS = {m.name: m.config_cls for m in methods()} | {"train": TrainConfig}


def _render_docs():
    spec = importlib.util.spec_from_file_location("render_docs", ROOT / "benchmarks" / "render_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_option_has_a_help_text(name):
    missing = [f.name for f in dataclasses.fields(CONFIGS[name]) if not fields.help_of(f).strip()]
    assert not missing, f"{name}: fields without help (declare them with efflm.core.fields.opt): {missing}"


def test_opt_keeps_the_default_and_needs_a_help_text():
    @dataclass(frozen=True)
    class C:
        a: int = fields.opt(3, "an int")
        b: tuple[str, ...] = fields.opt(("x", ""), "some names")
        c: list = fields.opt(help="a list", default_factory=list)

    assert C() == C(3, ("x", ""), [])
    assert fields.field_rows(C) == [
        ("a", "int", "3", "an int"),
        ("b", "tuple[str, ...]", "[x, '']", "some names"),
        ("c", "list", "[]", "a list"),
    ]
    with pytest.raises(ValueError, match="help"):
        fields.opt(1, "")


def test_methods_name_prints_the_method_and_its_options(capsys):
    assert main(["methods", "gptq"]) == 0
    out = capsys.readouterr().out
    m = get("gptq")
    assert out.startswith(f"gptq: {m.title}\n")
    for fact in ("quantize", m.arxiv, m.paper, "calibrates   yes", "streams      yes"):
        assert fact in out
    lines = out.splitlines()
    assert lines[lines.index("options:") + 1].split() == ["option", "type", "default", "what", "it", "does"]
    for name, typ, default, _ in fields.field_rows(m.config_cls):
        (row,) = [line for line in lines if line.startswith(f"{name} ")]
        assert re.match(rf"{name} +{re.escape(typ)} +{re.escape(default)}( |$)", row), row
    assert "train (the method" not in out  # only fine-tuning and distillation methods take a train: mapping


def test_methods_name_of_a_trained_method_shows_the_train_mapping(capsys):
    assert main(["methods", "lora"]) == 0
    out = capsys.readouterr().out
    assert "train (the method recipe's train: mapping):" in out
    assert any(line.startswith("grad_accum ") for line in out.splitlines())


def test_methods_without_a_name_lists_every_method(capsys):
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "family", "arXiv", "calib", "paper"]
    assert len(lines) == 1 + len(methods())


def test_an_unknown_method_is_a_one_line_error(capsys):
    assert main(["methods", "gtpq"]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("efflm: error:"), captured.err
    assert "did you mean 'gptq'" in lines[0]
    assert captured.out == ""


def test_the_help_column_wraps_under_itself():
    lines = fields.text_table(("a", "help"), [("x", "word " * 40)], width=40)
    assert len(lines) > 2 and all(len(line) <= 40 for line in lines)
    assert all(line.startswith("   ") for line in lines[2:])


def test_the_docs_options_reference_is_the_render_of_the_fields():
    mod = _render_docs()
    doc = (ROOT / "docs" / "methods.md").read_text()
    assert mod.section(doc, "options") == mod.render_options().strip("\n"), (
        "docs/methods.md's Method options reference is stale: run `python benchmarks/render_docs.py`"
    )


def test_render_rewrites_only_between_the_markers(tmp_path):
    mod = _render_docs()
    begin, end = mod.markers("options")
    doc = f"before\n{begin}\nold\n{end}\nafter\n"
    assert mod.splice(doc, "options", "new\n") == f"before\n{begin}\nnew\n{end}\nafter\n"
    with pytest.raises(ValueError, match="options:begin"):
        mod.splice("no markers", "options", "x")
    with pytest.raises(ValueError, match="options:begin"):
        mod.section(f"{end} {begin}", "options")  # out of order
