"""Returning freed memory to the system during training and layer-streamed runs (glibc only;
elsewhere nothing happens).

glibc serves an allocation from its heap unless it is larger than the mmap threshold, and after
each large free it raises that threshold (up to 32 MB), so a training step's many short-lived
multi-megabyte tensors come to live in a heap that never shrinks: the process's resident memory
grows well past what it uses. Fixing the threshold at 128 KB (``mallopt(M_MMAP_THRESHOLD)``, the
same as the environment variable ``MALLOC_MMAP_THRESHOLD_=131072``) makes every large tensor its
own mapping, returned the moment it is freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3
THRESHOLD = 128 * 1024


def return_freed_memory() -> bool:
    """Fix glibc's mmap threshold; True when it took effect."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD))
    except (OSError, AttributeError):
        return False


def trim_heap() -> bool:
    """Give the free pages of glibc's heap back to the system (``malloc_trim(0)``); changes no
    setting. A layer-streamed run calls it as each layer is freed: without it the heap keeps the
    pages of every layer's medium-sized temporaries and resident memory creeps up layer by layer."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        return bool(ctypes.CDLL(name).malloc_trim(0))
    except (OSError, AttributeError):
        return False


def available_bytes() -> int | None:
    """Memory the system could give this process now (``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
