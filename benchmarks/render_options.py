"""Rewrite docs/methods.md's "Method options reference" from the method configs' field help.

    python benchmarks/render_options.py [--doc docs/methods.md]

Only the text between ``<!-- options:begin -->`` and ``<!-- options:end -->`` changes: one table
per registered method (``efflm methods NAME`` prints the same), then the ``train:`` mapping of
fine-tuning recipes, each rendered by ``efflm.core.fields.reference_markdown``. A test
(tests/core/test_fields.py) checks the committed section equals ``render()``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from efflm.core import fields
from efflm.finetune.train import TrainConfig
from efflm.methods import methods

DOC = Path(__file__).resolve().parents[1] / "docs" / "methods.md"
TRAIN = ("`train:` — the training mapping of fine-tuning and distillation recipes", TrainConfig)


def render() -> str:
    return fields.reference_markdown(methods(), [TRAIN])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--doc", type=Path, default=DOC, help="the Markdown file holding the options markers")
    a = p.parse_args(argv)
    a.doc.write_text(fields.splice(a.doc.read_text(), render()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
