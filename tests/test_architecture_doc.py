"""docs/architecture.md says what the code does: its layer stack is the render of pyproject.toml's
import-linter contracts, every package of efflm is in a layer, the packages above efflm.methods
are barred from the registry, and every method is named by a test of its own package."""

import ast
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
REGISTRY_CONTRACT = "above efflm.methods, methods are looked up through it"


def _render():
    spec = importlib.util.spec_from_file_location("render_docs", ROOT / "benchmarks" / "render_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


render = _render()


def efflm_packages(root: Path = ROOT) -> set[str]:
    """efflm's top-level packages (a directory with ``__init__.py``) and top-level modules."""
    pkg = root / "efflm"
    return {f"efflm.{p.parent.name}" for p in pkg.glob("*/__init__.py")} | {
        f"efflm.{p.stem}" for p in pkg.glob("*.py") if p.stem != "__init__"
    }


def layer_problems(packages: set[str], pyproject: str) -> list[str]:
    layered = [name for line in render.layers(pyproject) for name in line]
    problems = [
        f"{p} is in no layer: add it to `layers = [...]` of the import-linter contract of type "
        f'"layers" in pyproject.toml, then run `python benchmarks/render_docs.py`'
        for p in sorted(packages - set(layered))
    ]
    problems += [f"the layers contract names {p}, which is no package or top-level module of efflm" for p in
                 sorted(set(layered) - packages)]  # fmt: skip
    problems += [f"{p} is in more than one layer" for p in sorted({p for p in layered if layered.count(p) > 1})]
    return problems


def test_the_docs_layer_stack_is_the_render_of_the_contracts():
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert render.section(doc, "layers") == render.render_layers().strip("\n"), (
        "docs/architecture.md's layer stack is stale: run `python benchmarks/render_docs.py`"
    )


def test_every_efflm_package_and_top_level_module_is_in_a_layer():
    packages = efflm_packages()
    assert {"efflm.methods", "efflm.pipeline", "efflm.api", "efflm.core", "efflm.cli"} <= packages
    assert layer_problems(packages, PYPROJECT) == []


def test_a_package_left_out_of_the_layers_is_named(tmp_path):
    (tmp_path / "efflm" / "newpkg").mkdir(parents=True)
    (tmp_path / "efflm" / "newpkg" / "__init__.py").write_text('"""New."""\n')
    (tmp_path / "efflm" / "tool.py").write_text('"""Tool."""\n')
    problems = layer_problems(efflm_packages(tmp_path), PYPROJECT)
    assert any(p.startswith("efflm.newpkg is in no layer") for p in problems)
    assert any(p.startswith("efflm.tool is in no layer") for p in problems)
    assert any("names efflm.cli, which is no package" for p in problems)


def test_the_render_is_one_row_per_package_numbered_from_the_bottom():
    pyproject = """
[[tool.importlinter.contracts]]
name = "x"
type = "layers"
layers = ["p.top", "p.a | p.b", "p.base"]
"""
    docs = {
        "p.top": "The ``top`` command. More text.\n\nAnother paragraph.",
        "p.a": "A: one | two\nlines.",
        "p.b": "",
        "p.base": "Base.",
    }
    assert render.render_layers_of(pyproject, docs).splitlines()[2:] == [
        "| 3 | `p.top` | The `top` command. |",
        "| 2 | `p.a` | A: one \\| two lines. |",
        "| 2 | `p.b` |  |",
        "| 1 | `p.base` | Base. |",
    ]
    with pytest.raises(ValueError, match="layers:begin"):
        render.section("no markers here", "layers")


def test_the_packages_above_methods_are_barred_from_the_registry():
    """The forbidden contract's sources are exactly the packages above efflm.methods, so a new
    package there cannot reach efflm.core.registry around the index."""
    stack = [name for line in render.layers(PYPROJECT) for name in line]
    above = set(stack[: stack.index("efflm.methods")])
    (contract,) = [c for c in render.contracts(PYPROJECT) if c["name"] == REGISTRY_CONTRACT]
    assert contract["type"] == "forbidden" and contract["forbidden_modules"] == ["efflm.core.registry"]
    assert contract.get("allow_indirect_imports") is True  # efflm.methods imports the registry
    assert set(contract["source_modules"]) == above, (
        f'pyproject.toml: `source_modules` of the contract "{REGISTRY_CONTRACT}" must be the packages above '
        f"efflm.methods in the layers contract: add {sorted(above - set(contract['source_modules']))}, "
        f"remove {sorted(set(contract['source_modules']) - above)}"
    )


def _names_and_imports(path: Path) -> tuple[set[str], set[str]]:
    strings, modules = set(), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            strings.add(node.value)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            modules |= {a.name for a in node.names}
    return strings, modules


def untested_methods(methods, tests: Path) -> list[str]:
    """Methods no ``test_*.py`` under ``tests/<package>/`` names — by the registered name as a
    string, or by importing the method's file — as ``"name (tests/<package>/)"``."""
    missing = []
    for m in methods:
        package = m.module.split(".")[1]
        files = sorted((tests / package).rglob("test_*.py"))
        refs = [_names_and_imports(p) for p in files]
        if not any(m.name in strings or m.module in modules for strings, modules in refs):
            missing.append(f"{m.name} (tests/{package}/)")
    return missing


def test_every_method_is_named_by_a_test_of_its_package(tmp_path):
    """docs/architecture.md's checklist: beside the matrix (tests/core/test_methods.py runs every
    registered method), each method has checks of its own in tests/<its package>/."""
    from efflm.methods import methods

    assert untested_methods(methods(), ROOT / "tests") == [], (
        "add a test of the method's own behaviour to tests/<package>/test_<paper>.py "
        "(or the package's test_<topic>.py) that names it or imports its file"
    )
    (tmp_path / "quantize").mkdir()
    (tmp_path / "quantize" / "test_other.py").write_text('from efflm.quantize import rtn\nNAME = "awq"\n')
    (tmp_path / "quantize" / "helper.py").write_text('NAME = "gptq"\n')  # not a test file
    by_name = {m.name: m for m in methods()}
    assert untested_methods([by_name[n] for n in ("rtn", "awq", "gptq")], tmp_path) == ["gptq (tests/quantize/)"]


def test_readme_stays_a_front_page():
    """The README is at most 200 lines (issue 32): details go to docs/, linked from it."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move details into docs/"
