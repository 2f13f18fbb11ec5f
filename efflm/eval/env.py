"""The environment every result row records."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


CODE_PATHS = ("efflm", "benchmarks", "pyproject.toml")  # what a measurement depends on


def git_commit() -> str:
    """The commit of efflm's source tree, ``-dirty`` when its code differs from that commit.

    Only the code counts (``CODE_PATHS``): the result files a benchmark run rewrites
    (results/, docs/) do not make the rows after it "dirty"."""
    src = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=normal", "--", *CODE_PATHS],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def kernels() -> dict:
    """Which kernels are in effect here: whether efflm's C library loaded, and so which q4 matmul,
    column sweep and decode step run (``c`` or ``torch``; a row's worker refines ``fast_decode``
    with the choice made for its model, see ``row_env``)."""
    from efflm.core import settings
    from efflm.nn import c_kernels

    c = c_kernels.available()
    return {
        "c_library": c,
        "q4": "c" if c else "torch",
        "isa": c_kernels.isa() if c else None,  # the 4-bit row kernel chosen by CPU feature (avx512vnni, avx2)
        "sweep": "c" if c and settings.sweep_kernel() else "torch",
        "fast_decode": "c" if c and settings.fast_decode() else "torch",
    }


def row_env(env: dict, data: dict) -> dict:
    """``env`` for one result row: the kernel choices its worker reported (``data["kernels"]``) over
    the process-wide ones, and the device it was measured on (``data["device"]``: ``cpu``, or
    ``cuda:N (the GPU's name)``)."""
    row = {**env, "kernels": {**env.get("kernels", {}), **data.get("kernels", {})}}
    return {**row, "device": data["device"]} if "device" in data else row


def environment() -> dict:
    from importlib.metadata import version

    import transformers

    from efflm.core import settings

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "efflm": version("efflm"),
        "commit": git_commit(),
        "python": platform.python_version(),
        "settings": settings.recorded(),  # the EFFLM_* values that change kernels or numerics
        "kernels": kernels(),
    }
