"""Where efflm keeps what it builds or converts (models, token caches, compiled kernels)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$EFFLM_CACHE``, else ``~/.cache/efflm``."""
    return Path(os.environ.get("EFFLM_CACHE", Path.home() / ".cache" / "efflm"))
