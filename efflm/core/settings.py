"""Every ``EFFLM_*`` environment variable, declared once and read only here.

Each variable has a name, its allowed values, a default and what it changes; the accessors
below validate the value (an invalid one is a one-line ``EfflmError``) and return it typed.
``docs/methods.md``'s "Environment variables" table is ``render_table()`` (regenerate with
``python benchmarks/render_settings.py``), and every result row records ``recorded()``.
An unset or empty variable takes its default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from efflm.core.errors import EfflmError


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    allowed: tuple[str, ...] | None  # None: any value (a path)
    changes: str  # what it changes, one sentence for the docs table
    recorded: bool = False  # it changes kernels or numerics: every result row records its value


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "EFFLM_CACHE",
        "~/.cache/efflm",
        None,
        "Where efflm keeps what it builds or converts: converted models, token caches, the compiled C kernels "
        "(`kernels/`), the measured memory bandwidth.",
    ),
    Setting(
        "EFFLM_DEBUG",
        "0",
        ("0", "1"),
        "`1`: the CLI re-raises an internal error with its traceback instead of printing one line (exit 1).",
    ),
    Setting(
        "EFFLM_FAST_DECODE",
        "1",
        ("0", "1"),
        "`0`: the decode path never uses the fused C decode step (`Engine(model).fast_off` says so); "
        "every step runs the torch reference path.",
        recorded=True,
    ),
    Setting(
        "EFFLM_ISA",
        "auto",
        ("auto", "avx2"),
        "The 4-bit C kernel: `auto` takes AVX-512 VNNI where the CPU has it (same results, faster), `avx2` "
        "keeps the AVX2 kernel.",
        recorded=True,
    ),
    Setting(
        "EFFLM_PROGRESS",
        "auto",
        ("auto", "0", "1"),
        "Progress bars: `auto` shows them on a terminal only, `0` never, `1` always.",
    ),
    Setting(
        "EFFLM_Q4_KERNEL",
        "1",
        ("0", "1"),
        "`0`: efflm's C kernels are not built or loaded: packed 4/8-bit and lookup-table Linears use torch's "
        "kernels, and the fused decode step and the C column sweep are off too.",
        recorded=True,
    ),
    Setting(
        "EFFLM_STREAM",
        "1",
        ("0", "1"),
        "`0`: a recipe of layerwise steps loads the whole model first instead of reading one decoder layer "
        "at a time from the checkpoint (the result is the same bit for bit; only memory and time differ).",
    ),
    Setting(
        "EFFLM_SWEEP_KERNEL",
        "1",
        ("0", "1"),
        "`0`: GPTQ's and SparseGPT's column sweep runs the torch loop instead of the C kernel.",
        recorded=True,
    ),
)
BY_NAME = {s.name: s for s in SETTINGS}


def value(name: str) -> str:
    """The variable's effective value (its default when unset or empty); ``EfflmError`` if not allowed."""
    s = BY_NAME[name]
    raw = os.environ.get(name, "").strip()
    if not raw:
        return s.default
    if s.allowed is not None and raw not in s.allowed:
        raise EfflmError(f"{name}={raw!r} is not one of {', '.join(s.allowed)} (see docs/methods.md)")
    return raw


def check() -> None:
    """Validate every variable now (the CLI does before any command)."""
    for s in SETTINGS:
        value(s.name)


def cache_dir() -> Path:
    """``$EFFLM_CACHE``, else ``~/.cache/efflm``."""
    return Path(value("EFFLM_CACHE")).expanduser()


def debug() -> bool:
    return value("EFFLM_DEBUG") == "1"


def fast_decode() -> bool:
    return value("EFFLM_FAST_DECODE") == "1"


def progress() -> bool | None:
    """Show progress bars: True, False, or None for "on a terminal only"."""
    v = value("EFFLM_PROGRESS")
    return None if v == "auto" else v == "1"


def isa() -> str:
    return value("EFFLM_ISA")


def q4_kernel() -> bool:
    return value("EFFLM_Q4_KERNEL") == "1"


def stream() -> bool:
    return value("EFFLM_STREAM") == "1"


def sweep_kernel() -> bool:
    return value("EFFLM_SWEEP_KERNEL") == "1"


def recorded() -> dict[str, str]:
    """The effective values of the variables that change kernels or numerics (in every result row)."""
    return {s.name: value(s.name) for s in SETTINGS if s.recorded}


def render_table() -> str:
    """The Markdown table of every variable (docs/methods.md, between the settings markers)."""
    lines = [
        "| Variable | Values | Default | Recorded in result rows | What it changes |",
        "|---|---|---|---|---|",
    ]
    for s in SETTINGS:
        values = "a path" if s.allowed is None else ", ".join(f"`{v}`" for v in s.allowed)
        recorded_ = "yes" if s.recorded else "no"
        lines.append(f"| `{s.name}` | {values} | `{s.default}` | {recorded_} | {s.changes} |")
    return "\n".join(lines) + "\n"
