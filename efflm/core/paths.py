"""Where efflm keeps what it builds or converts (models, token caches, compiled kernels)."""

from __future__ import annotations

from pathlib import Path

from efflm.core import settings


def cache_dir() -> Path:
    """``$EFFLM_CACHE``, else ``~/.cache/efflm`` (``efflm.core.settings``)."""
    return settings.cache_dir()
