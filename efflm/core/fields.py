"""Every config option's help text, declared beside the field, and what is rendered from it.

``opt(default, help)`` is ``dataclasses.field`` with the help text in the field's metadata (as
peft's ``LoraConfig`` keeps one per field): what the option does, its unit or range and its
allowed values. ``efflm methods NAME`` and the options reference in docs/methods.md are both
rendered from it by the pure functions below (rows and strings; nothing here prints).
"""

from __future__ import annotations

import dataclasses
import textwrap
import typing
from collections.abc import Callable, Iterable
from typing import Any

from efflm.core.registry import QUIET, Method

HELP = "help"  # the metadata key
HEAD = ("option", "type", "default", "what it does")


def opt(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    quiet: bool = False,
) -> Any:
    """A dataclass field with its help text: ``bits: int = opt(4, "bits per weight code, 2..8")``.
    ``quiet``: left out of the config's label and stored recipe while at its default."""
    if not help.strip():
        raise ValueError("opt needs a help text")
    meta = {HELP: help, QUIET: True} if quiet else {HELP: help}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def help_of(f: dataclasses.Field) -> str:
    return f.metadata.get(HELP, "")


def type_name(t: Any) -> str:
    return t.__name__ if isinstance(t, type) else str(t).replace("typing.", "")


def show(value: Any) -> str:
    """A default as a recipe (YAML) writes it: ``true``, ``[k_proj, v_proj]``, ``""``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return value if value and value.strip() == value and not value.startswith(("[", "-")) else repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return repr(value)


def field_rows(cls: type) -> list[tuple[str, str, str, str]]:
    """(name, type, default, help) for each field of a config dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = show(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = show(f.default_factory())
        else:
            default = "(required)"
        rows.append((f.name, type_name(hints[f.name]), default, help_of(f)))
    return rows


def text_table(head: tuple[str, ...], rows: Iterable[tuple[str, ...]], width: int = 0) -> list[str]:
    """Columns padded to their widest cell; the last column, not padded, is wrapped to fit
    ``width`` characters (0: not wrapped) with its continuation lines under its first."""
    rows = [head, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
    indent = sum(widths) + 2 * len(widths)
    out = []
    for r in rows:
        first = "  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  "
        last = textwrap.wrap(r[-1], max(width - indent, 30)) if width and r[-1] else [r[-1]]
        out += [(first + last[0]).rstrip(), *(" " * indent + line for line in last[1:])]
    return out


def describe(m: Method, extra: Iterable[tuple[str, type]] = (), width: int = 0) -> list[str]:
    """``efflm methods NAME``: the method's facts, then a table of its options (and of each
    ``(heading, config class)`` in ``extra``, e.g. the ``train:`` mapping of fine-tuning), the
    help column wrapped to ``width`` characters (0: not wrapped)."""
    lines = [
        f"{m.name}: {m.title}",
        f"family       {m.family}",
        f"arXiv        {m.arxiv or '–'}",
        f"catalog id   {m.paper or '–'}",
        f"calibrates   {'yes' if m.needs_calibration else 'no'}",
    ]
    if m.family in ("quantize", "prune", "lowrank"):  # the compression families: does it stream?
        lines.append(f"streams      {'yes: one decoder layer at a time' if m.layerwise else 'no: the whole model'}")
    lines += [
        "",
    ]
    rows = field_rows(m.config_cls)
    lines += ["options:", *text_table(HEAD, rows, width)] if rows else ["options: none"]
    for heading, cls in extra:
        lines += ["", f"{heading}:", *text_table(HEAD, field_rows(cls), width)]
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(cls: type) -> list[str]:
    rows = field_rows(cls)
    if not rows:
        return ["No options."]
    out = ["| " + " | ".join(HEAD) + " |", "|---|---|---|---|"]
    for name, typ, default, text in rows:
        out.append(f"| `{name}` | {_cell(typ)} | `{_cell(default)}` | {_cell(text)} |")
    return out


def reference_markdown(methods: Iterable[Method], extra: Iterable[tuple[str, type]] = ()) -> str:
    """The options reference of docs/methods.md: one table per method (then one per ``extra``
    ``(heading, config class)``), rendered from the fields' help texts."""
    out: list[str] = []
    for m in methods:
        paper = f", arXiv {m.arxiv}" if m.arxiv else ""
        out += [f"### `{m.name}`", "", f"{m.title} — family {m.family}{paper}", "", *markdown_table(m.config_cls), ""]
    for heading, cls in extra:
        out += [f"### {heading}", "", *markdown_table(cls), ""]
    return "\n".join(out)
