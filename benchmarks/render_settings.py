"""Rewrite docs/methods.md's "Environment variables" table from ``efflm.core.settings``.

    python benchmarks/render_settings.py [--doc docs/methods.md]

Only the text between ``<!-- settings:begin -->`` and ``<!-- settings:end -->`` changes. A test
checks the committed table equals ``settings.render_table()``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from efflm.core import settings

BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"
DOC = Path(__file__).resolve().parents[1] / "docs" / "methods.md"


def section(text: str) -> str:
    """The text between the markers (``ValueError`` if they are missing)."""
    head, sep, rest = text.partition(BEGIN)
    body, sep2, _ = rest.partition(END)
    if not sep or not sep2:
        raise ValueError(f"the {BEGIN} / {END} markers are missing")
    return body


def rewrite(text: str) -> str:
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    section(text)
    return f"{head}{BEGIN}\n{settings.render_table()}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--doc", type=Path, default=DOC)
    a = p.parse_args(argv)
    a.doc.write_text(rewrite(a.doc.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
