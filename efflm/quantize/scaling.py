"""Moving a per-input-channel scale into the op that produces the input (AWQ, SmoothQuant).

``y = W x = (W·diag(s)) (x / s)``: multiply the consumers' columns by ``s`` and divide the
producer's output channels (a norm's weight, or a Linear's rows and bias) by ``s``, and the
float model computes the same function while the consumers' weights change scale.
"""

from __future__ import annotations

import torch


def fold_scales(source: torch.nn.Module, s: torch.Tensor, offset: float = 0.0) -> None:
    """Divide the source's output channels by s (a norm's weight, or a Linear's rows and bias). A norm
    that scales by ``offset + weight`` (Gemma's 1 + weight) has that sum divided, not the weight."""
    if offset:
        source.weight.data.add_(offset).div_(s.to(source.weight.dtype)).sub_(offset)
        return
    source.weight.data.div_(s.reshape(-1, *([1] * (source.weight.ndim - 1))).to(source.weight.dtype))
    if getattr(source, "bias", None) is not None:
        source.bias.data.div_(s.to(source.bias.dtype))


def fold_offset(layout, source: str) -> float:
    """The ``offset`` ``fold_scales`` takes for a layout's scale source: its norms' (a Linear has none)."""
    return 0.0 if source in layout.linears else layout.norm_offset


def may_fold(prefix: str, group: tuple[str, ...], source: str | None, linears: tuple[str, ...], selects) -> bool:
    """Whether a scale may be folded between ``source`` and ``group``: only when there is a source (a
    MoE block's norm has none: it feeds the router too) and every Linear it would change is one the
    step changes (``selects``), so an ignored Linear is left exactly as it was."""
    if source is None:
        return False
    touched = [*group, source] if source in linears else list(group)
    return all(selects(prefix + name) for name in touched)
