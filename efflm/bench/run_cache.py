"""Finished runs of a long benchmark kept on disk, per version of the code they ran, so a sweep
that takes longer than one sitting can stop and go on where it stopped.

A run is keyed by the git tree of the code it depends on (``efflm/``, ``pyproject.toml`` and the
benchmark script), not by the commit: commits that only add result files or docs keep the
finished runs valid, any change to the code measures again, and a tree whose code differs from
its commit never reuses nor stores a run. The cache file can therefore be committed beside the
results it produced (and carried to the next sitting)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

_LOCK = threading.Lock()  # a sweep may run several workers at once from threads
CODE = ("efflm", "pyproject.toml")


def code_version(script: str | None = None, src: Path | None = None) -> str:
    """A short id of the committed code (``CODE`` plus ``script``) of the checkout ``src`` (efflm's
    own by default), ``-dirty`` when the working tree's copy differs, ``unknown`` outside git."""
    src = Path(src).resolve() if src else Path(__file__).resolve().parents[2]
    paths = [*CODE, *([os.path.relpath(Path(script).resolve(), src)] if script else [])]
    try:
        git = ["git", "-C", str(src)]
        ids = subprocess.run([*git, "rev-parse", *(f"HEAD:{p}" for p in paths)], capture_output=True, text=True)
        status = [*git, "status", "--porcelain", "--untracked-files=normal", "--", *paths]
        dirty = subprocess.run(status, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if ids.returncode:
        return "unknown"
    short = hashlib.sha1(ids.stdout.encode()).hexdigest()[:12]
    return short + ("-dirty" if dirty else "")


def cached(cache: str | None, key: str, compute: Callable[[], Any], script: str | None = None) -> Any:
    """``compute()``, or its stored result for ``key`` measured on this same code."""
    from efflm.eval.env import git_commit

    version = code_version(script)
    if not cache or version.endswith("-dirty") or version == "unknown":
        return compute()
    path, full = Path(cache), f"{version}|{key}"
    with _LOCK:
        store = json.loads(path.read_text()) if path.is_file() else {}
    if full in store:
        return store[full]["result"]
    result = compute()
    with _LOCK:  # read again: another worker may have stored its run meanwhile
        store = json.loads(path.read_text()) if path.is_file() else {}
        store[full] = {"commit": git_commit(), "result": result}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(store, indent=1, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    return result
