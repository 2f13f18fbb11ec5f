"""Finished runs of a long benchmark kept on disk, per clean commit, so a sweep that takes
longer than one sitting can stop and go on where it stopped (a dirty tree never reuses a run)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cached(cache: str | None, key: str, compute: Callable[[], Any]) -> Any:
    """``compute()``, or its stored result for ``key`` at this same clean commit of efflm."""
    from efflm.eval.env import git_commit

    commit = git_commit()
    if not cache or commit.endswith("-dirty") or commit == "unknown":
        return compute()
    path = Path(cache)
    store = json.loads(path.read_text()) if path.is_file() else {}
    full = f"{commit}|{key}"
    if full not in store:
        store[full] = compute()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(store, indent=1))
        os.replace(tmp, path)
    return store[full]
