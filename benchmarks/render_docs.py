"""Rewrite the generated sections of efflm's docs, each between ``<!-- NAME:begin -->`` and
``<!-- NAME:end -->`` markers (nothing else in the files changes):

- ``layers`` in docs/architecture.md: the layer stack of pyproject.toml's import-linter "layers"
  contract, one row per package, described by the first sentence of its docstring;
- ``options`` in docs/methods.md: every method's options (``efflm methods NAME`` prints the same)
  and the ``train:`` mapping of fine-tuning recipes, from the config fields' help;
- ``settings`` in docs/methods.md: the ``EFFLM_*`` environment variables (``efflm.core.settings``).

    python benchmarks/render_docs.py [--root DIR]

Tests (tests/test_architecture_doc.py, tests/core/test_fields.py, tests/core/test_settings.py)
check that each committed section equals its render.
"""

from __future__ import annotations

import argparse
import ast
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def section(doc: str, name: str) -> str:
    """The text between a document's ``name`` markers, without surrounding newlines (ValueError
    if the markers are missing or out of order)."""
    begin, end = markers(name)
    i, j = doc.find(begin), doc.find(end)
    if i < 0 or j < i:
        raise ValueError(f"no {begin} ... {end} section")
    return doc[i + len(begin) : j].strip("\n")


def splice(doc: str, name: str, body: str) -> str:
    """The document with the text between its ``name`` markers replaced by ``body``."""
    section(doc, name)
    begin, end = markers(name)
    i, j = doc.find(begin) + len(begin), doc.find(end)
    return f"{doc[:i]}\n{body.strip(chr(10))}\n{doc[j:]}"


def contracts(pyproject: str) -> list[dict]:
    """The ``[[tool.importlinter.contracts]]`` tables of a pyproject.toml's text."""
    return tomllib.loads(pyproject)["tool"]["importlinter"]["contracts"]


def layers(pyproject: str) -> list[list[str]]:
    """The "layers" contract's layers, top first, each as its packages (``a | b`` → ``[a, b]``)."""
    found = [c for c in contracts(pyproject) if c.get("type") == "layers"]
    if len(found) != 1:
        raise ValueError(f"expected one import-linter contract of type 'layers', found {len(found)}")
    return [[name.strip() for name in line.split("|")] for line in found[0]["layers"]]


def first_sentence(doc: str) -> str:
    """A docstring's first sentence on one line, its reST ````code```` as Markdown `code`."""
    paragraph = " ".join(doc.strip().split("\n\n", 1)[0].split())
    sentence = re.split(r"(?<=\.)\s", paragraph, maxsplit=1)[0]
    return sentence.replace("``", "`").replace("|", "\\|")


def render_layers_of(pyproject: str, docstrings: Mapping[str, str]) -> str:
    """The layer stack as a Markdown table: the contract's layers, numbered from the bottom, one row
    per package, described by ``docstrings[package]``'s first sentence."""
    stack = layers(pyproject)
    rows = [
        "| layer | package | what it is (the first sentence of its docstring) |",
        "|---:|---|---|",
    ]
    for depth, line in zip(range(len(stack), 0, -1), stack):
        for name in line:
            rows.append(f"| {depth} | `{name}` | {first_sentence(docstrings[name])} |")
    return "\n".join(rows) + "\n"


def source(root: Path, module: str) -> Path:
    """A module's file: a package's ``__init__.py``, else ``<name>.py``."""
    path = root.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def docstrings(root: Path, modules: list[str]) -> dict[str, str]:
    """Each module's docstring, read without importing it."""
    return {m: ast.get_docstring(ast.parse(source(root, m).read_text(encoding="utf-8"))) or "" for m in modules}


def render_layers(root: Path = ROOT) -> str:
    """``render_layers_of`` this checkout: its pyproject.toml and its packages' docstrings."""
    pyproject = (root / "pyproject.toml").read_text(encoding="utf-8")
    return render_layers_of(pyproject, docstrings(root, [name for line in layers(pyproject) for name in line]))


def render_options() -> str:
    from efflm.core import fields
    from efflm.finetune.train import TrainConfig
    from efflm.methods import methods

    train = ("`train:` — the training mapping of fine-tuning and distillation recipes", TrainConfig)
    return fields.reference_markdown(methods(), [train])


def render_settings() -> str:
    from efflm.core import settings

    return settings.render_table()


SECTIONS: dict[str, tuple[str, Callable[[], str]]] = {
    "layers": ("docs/architecture.md", render_layers),
    "options": ("docs/methods.md", render_options),
    "settings": ("docs/methods.md", render_settings),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=ROOT, help="the checkout whose docs are rewritten")
    a = p.parse_args(argv)
    for name, (rel, render) in SECTIONS.items():
        path = a.root / rel
        path.write_text(splice(path.read_text(encoding="utf-8"), name, render()), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
