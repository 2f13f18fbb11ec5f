"""Adding a method is adding its file: ``efflm.methods`` finds it, and these tests name the two
lines that must travel with it (its module in the independence contract, its catalog entry)."""

import re
import tomllib
from pathlib import Path

import efflm
import efflm.methods as index
from efflm.catalog import store

ROOT = Path(efflm.__file__).parent.parent
PYPROJECT = ROOT / "pyproject.toml"
CONTRACT = "no paper file imports another paper file"
REGISTERS = re.compile(r"^@register\(", re.M)


def _contract_modules() -> list[str]:
    contracts = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["importlinter"]["contracts"]
    (contract,) = [c for c in contracts if c["name"] == CONTRACT]
    return contract["modules"]


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def test_discovery_is_sorted_and_every_method_knows_its_module():
    found = index.discover()
    assert found == sorted(set(found))
    modules = index.method_modules()
    assert len(modules) == len(index.methods()) and modules
    for name, module in modules.items():
        assert module in found, f"{name}: registered by {module}, which efflm.methods does not discover"
        assert index.get(name).apply.__module__ == module


def test_every_paper_file_is_in_the_independence_contract_and_nothing_else():
    listed = _contract_modules()
    registering = sorted(set(index.method_modules().values()))
    problems = [
        f'pyproject.toml: add the line `    "{m}",` to `modules = [...]` of the import-linter contract '
        f'name = "{CONTRACT}" (it registers {", ".join(n for n, mm in index.method_modules().items() if mm == m)})'
        for m in registering
        if m not in listed
    ]
    problems += [
        f'pyproject.toml: remove "{m}" from `modules = [...]` of the import-linter contract name = "{CONTRACT}" '
        f"(it registers no method; shared math is not a paper file)"
        for m in listed
        if m not in registering
    ]
    problems += [
        f'pyproject.toml: "{m}" is listed twice in the contract "{CONTRACT}"'
        for m in set(listed)
        if listed.count(m) > 1
    ]
    assert not problems, "\n".join(problems)


def test_every_method_has_a_catalog_entry():
    entries = store.load().by_id()
    problems = []
    for m in index.methods():
        if not m.paper:
            problems.append(f"{m.module}: add `paper=<catalog id>` to the @register(...) of {m.name!r}")
        elif m.paper not in entries:
            problems.append(
                f"efflm/catalog/papers.yaml: add an entry `id: {m.paper}` with `implemented_by: [{m.name}]` "
                f"(method {m.name!r} in {m.module} names paper={m.paper!r}; `efflm papers lint` checks it)"
            )
    assert not problems, "\n".join(problems)


def test_every_file_that_calls_register_is_discovered_and_registers():
    discovered = set(index.discover())
    registering = set(index.method_modules().values())
    problems = []
    for path in sorted((ROOT / "efflm").rglob("*.py")):
        if not REGISTERS.search(path.read_text(encoding="utf-8")):
            continue
        module = _module_name(path)
        rel = path.relative_to(ROOT)
        if module not in discovered:
            problems.append(
                f"{rel} calls @register( but efflm.methods never imports it: move it into a family package "
                f"(efflm.methods.PACKAGES: {', '.join(index.PACKAGES)}) or add {module!r} to efflm.methods.MODULES"
            )
        elif module not in registering:
            problems.append(f"{rel} calls @register( but registered no method (is the decorator on `apply`?)")
    assert not problems, "\n".join(problems)


def test_hooks_are_train_hooks_and_hooks_for_finds_them():
    from efflm.finetune.hooks import TrainHooks, hooks_for

    hooked = [m for m in index.methods() if m.hooks is not None]
    assert hooked, "no method registered hooks="
    for m in hooked:
        assert isinstance(m.hooks, type) and issubclass(m.hooks, TrainHooks), f"{m.name}: hooks={m.hooks!r}"
        assert m.family in ("finetune", "distill"), f"{m.name}: hooks= on a {m.family} method"
        assert type(hooks_for(m.config_cls())) is m.hooks
    plain = next(m for m in index.methods() if m.name == "lora")
    assert plain.hooks is None and type(hooks_for(plain.config_cls())) is TrainHooks
