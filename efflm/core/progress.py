"""Progress bars for long work (shown on a terminal, silent in logs and tests)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

from efflm.core import settings

T = TypeVar("T")


def progress(
    it: Iterable[T] | None, desc: str, total: int | None = None, leave: bool = False, disable: bool = False
) -> Iterable[T]:
    """A bar over ``it`` (or, with ``it`` None, one updated by hand up to ``total``)."""
    if not disable:
        show = settings.progress()  # EFFLM_PROGRESS: None shows bars on a terminal only
        disable = None if show is None else not show
    return tqdm(it, desc=desc, total=total, leave=leave, disable=disable, dynamic_ncols=True)
