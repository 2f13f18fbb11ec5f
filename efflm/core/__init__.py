"""The bottom layer: the method contract (config base, registry decorator), recipes, errors,
atomic writes, paths, progress, devices (``--device``) and settings (``EFFLM_*``). It imports nothing else of efflm; look methods up through
``efflm.methods``, which imports every method file so that each registers itself."""

from efflm.core.errors import ConfigError, EfflmError
from efflm.core.registry import MethodConfig, register

__all__ = ["ConfigError", "EfflmError", "MethodConfig", "register"]
