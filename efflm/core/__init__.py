"""Method contract: configs, registry, recipes and errors."""

from efflm.core.errors import ConfigError, EfflmError
from efflm.core.registry import MethodConfig, config_from_dict, get, methods, register

__all__ = ["ConfigError", "EfflmError", "MethodConfig", "config_from_dict", "get", "methods", "register"]
