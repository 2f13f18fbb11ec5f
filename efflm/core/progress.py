"""Progress bars for long work (shown on a terminal, silent in logs and tests)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(
    it: Iterable[T] | None, desc: str, total: int | None = None, leave: bool = False, disable: bool = False
) -> Iterable[T]:
    """A bar over ``it`` (or, with ``it`` None, one updated by hand up to ``total``)."""
    if not disable:
        disable = None if os.environ.get("EFFLM_PROGRESS", "auto") == "auto" else os.environ["EFFLM_PROGRESS"] == "0"
    return tqdm(it, desc=desc, total=total, leave=leave, disable=disable, dynamic_ncols=True)
