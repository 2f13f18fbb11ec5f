"""``--device auto|cpu|cuda|cuda:N``: the device a command computes on, checked before any work.

``auto`` is the first GPU when torch sees one, else the CPU. A device that is not there (no
CUDA, an index past the last GPU, a name torch does not know) is a one-line ``EfflmError``.
"""

from __future__ import annotations

import re

import torch

from efflm.core.errors import EfflmError

CHOICES_HELP = "auto (the GPU when there is one), cpu, cuda or cuda:N"
_FORM = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve(spec: str | torch.device | None = "auto") -> torch.device:
    """The ``torch.device`` a ``--device`` value names, after checking it exists here."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if not _FORM.match(spec):
        raise EfflmError(f"unknown device {spec!r}: expected {CHOICES_HELP}")
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise EfflmError(f"device {spec!r} asked for, but torch sees no CUDA GPU here (use --device cpu)")
    index = int(spec.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise EfflmError(f"device {spec!r} asked for, but this machine has {count} CUDA GPU(s) (cuda:0..{count - 1})")
    return torch.device("cuda", index)


def is_cuda(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (timings of GPU work are only true after this)."""
    if is_cuda(device):
        torch.cuda.synchronize(torch.device(device))


def peak_memory_mb(device: torch.device | str) -> float | None:
    """Peak GPU memory allocated by torch since the last reset (None on the CPU)."""
    if not is_cuda(device):
        return None
    return torch.cuda.max_memory_allocated(torch.device(device)) / 2**20


def of(module: torch.nn.Module) -> torch.device:
    """The device ``module`` computes on: that of its first parameter (or buffer); the CPU for none."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def move(obj, device: torch.device | str):
    """``obj`` with every tensor in it (nested dicts, lists, tuples) on ``device``; the rest as is.
    Tensors already there are returned themselves (no copy)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: move(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [move(v, device) for v in obj]
    if type(obj) is tuple:
        return tuple(move(v, device) for v in obj)
    return obj


def name(device: torch.device | str) -> str:
    """What a result row records: ``cpu``, or ``cuda:N (the GPU's name)``."""
    device = torch.device(device)
    if not is_cuda(device):
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
