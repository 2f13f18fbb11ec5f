"""The method registry: a plain dict filled by a decorator. It imports no method.

A method is a frozen dataclass config (validated in ``__post_init__``) plus an
``apply(model, config, calib) -> model`` function. ``check(hf_config, config)`` is an
optional model-dependent validation that runs before any work starts. A ``data`` method's
``apply(texts, config, ctx)`` reads rows' texts instead of a model (``efflm.data_methods``).

Method files register themselves when imported; ``efflm.methods`` is the one index that
finds and imports them all (the CLI, pipeline, bench and catalog go through it). A trained
method passes its ``TrainHooks`` subclass as ``hooks=``; the registry records it (and the
module ``apply`` lives in) without importing any method family.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from efflm.core.errors import ConfigError, EfflmError

FAMILIES = ("baseline", "quantize", "prune", "lowrank", "distill", "finetune", "inference", "data")


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method config. Subclasses set ``method`` and validate in __post_init__."""

    method: ClassVar[str] = ""

    def _shown(self) -> list[dataclasses.Field]:
        """The fields a label and a stored recipe write: all but a ``quiet`` one left at its default
        (``ignore``/``targets``, added later, so earlier rows keep their labels)."""
        return [
            f for f in dataclasses.fields(self) if not (f.metadata.get(QUIET) and getattr(self, f.name) == f.default)
        ]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **{f.name: _plain(getattr(self, f.name)) for f in self._shown()}}

    def label(self) -> str:
        """Unambiguous short label: ``rtn(bits=4,group_size=64,symmetric=True)``."""
        args = ",".join(f"{f.name}={getattr(self, f.name)}" for f in self._shown())
        return f"{self.method}({args})" if args else self.method


QUIET = "quiet"  # field metadata: left out of labels and stored recipes while at its default


def _plain(value: Any) -> Any:
    """A field's value as ``dataclasses.asdict`` gives it (a deep copy of containers)."""
    import copy

    return copy.deepcopy(value)


@dataclass(frozen=True)
class Method:
    name: str
    family: str
    arxiv: str | None
    title: str
    needs_calibration: bool
    config_cls: type[MethodConfig]
    apply: Callable[..., Any]
    check: Callable[[Any, MethodConfig], None] | None = None
    paper: str = ""  # id of the catalog entry (efflm/catalog/papers.yaml) this method implements
    out_config: Callable[[Any, MethodConfig], Any] | None = None  # the config after apply, if it changes
    hooks: type | None = None  # a trained method's TrainHooks subclass (efflm.finetune.hooks)
    module: str = ""  # the method file that registered it (apply's module)
    layerwise: bool = False  # apply visits decoder layers once, in order, only through efflm.models.streaming


_REGISTRY: dict[str, Method] = {}


def register(
    config_cls: type[MethodConfig],
    *,
    family: str,
    title: str,
    arxiv: str | None,
    needs_calibration: bool,
    paper: str,
    check: Callable | None = None,
    out_config: Callable | None = None,
    hooks: type | None = None,
    layerwise: bool = False,
) -> Callable:
    """Decorator for an ``apply`` function: ``@register(RTNConfig, family=...)``.

    ``hooks`` is a trained method's ``TrainHooks`` subclass (what it adds to the training loop,
    ``efflm.finetune.hooks.hooks_for``); typed loosely because the registry imports no method.

    ``layerwise``: ``apply`` reaches the decoder layers only through ``each_layer``,
    ``decoder_linears`` or ``efflm.calib.layerwise.run`` — each layer once, in order, touching
    nothing outside them — so it can run on a layer-streamed model (``efflm.models.streaming``).
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}")

    def wrap(apply_fn: Callable) -> Callable:
        name = config_cls.method
        if not name or name in _REGISTRY:
            raise ValueError(f"method name {name!r} empty or registered twice")
        _REGISTRY[name] = Method(
            name,
            family,
            arxiv,
            title,
            needs_calibration,
            config_cls,
            apply_fn,
            check,
            paper,
            out_config,
            hooks,
            apply_fn.__module__,
            layerwise,
        )
        return apply_fn

    return wrap


def methods() -> list[Method]:
    """Every registered method (those whose files were imported), by family then name."""
    return sorted(_REGISTRY.values(), key=lambda m: (FAMILIES.index(m.family), m.name))


def get(name: str) -> Method:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1, cutoff=0.4)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise EfflmError(f"unknown method {name!r}{hint} (see `efflm methods`)")
    return _REGISTRY[name]


def _coerce(name: str, field: str, typ: Any, value: Any) -> Any:
    origin = typing.get_origin(typ)
    if origin is tuple:  # tuple[str, ...] from a YAML list (or one string)
        item = typing.get_args(typ)[0]
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list | tuple):
            raise ConfigError(f"{name}: {field} must be a list, got {value!r}")
        return tuple(_coerce(name, field, item, v) for v in values)
    allowed = typing.get_args(typ) if origin in (typing.Union, types.UnionType) else (typ,)
    for t in allowed:
        if t is type(None) and value is None:
            return None
        if t is bool and isinstance(value, bool):
            return value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is str and isinstance(value, str):
            return value
    names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise ConfigError(f"{name}: {field} must be {names}, got {value!r}")


def config_from_dict(d: dict[str, Any]) -> MethodConfig:
    """Build and validate a config from ``{"method": name, **fields}``."""
    if not isinstance(d, dict) or "method" not in d:
        raise ConfigError(f"each recipe step needs a 'method' key, got {d!r}")
    m = get(str(d["method"]))
    hints = typing.get_type_hints(m.config_cls)
    fields = {f.name for f in dataclasses.fields(m.config_cls)}
    kwargs = {}
    for key, value in d.items():
        if key == "method":
            continue
        if key not in fields:
            close = difflib.get_close_matches(key, sorted(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(sorted(fields))}"
            raise ConfigError(f"{m.name}: unknown option {key!r}{hint}")
        kwargs[key] = _coerce(m.name, key, hints[key], value)
    try:
        return m.config_cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{m.name}: {e}") from None


def check_for_model(hf_config: Any, config: MethodConfig) -> Any:
    """Model-dependent validation (e.g. group size divides every input dimension); returns the
    model config the next recipe step will see (a structured-pruned model has new sizes)."""
    m = get(config.method)
    if m.check is not None:
        m.check(hf_config, config)
    return m.out_config(hf_config, config) if m.out_config is not None else hf_config
