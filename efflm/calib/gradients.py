"""Calibration gradients of the language-modelling loss, for the methods that need them
(LLM-Pruner's first-order Taylor importance, Fisher-weighted SVD's Fisher information).

Only the decoder Linears' weights take gradients; one backward per calibration sample.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from efflm.core.errors import ConfigError, EfflmError
from efflm.core.progress import progress
from efflm.models.arch import decoder_linears


def check_grad_len(cfg) -> None:
    """Shared validation of a gradient-using config's ``grad_len`` (tokens per calibration window)."""
    if cfg.grad_len < 2:
        raise ConfigError(f"{cfg.method}: grad_len must be at least 2 tokens, got {cfg.grad_len}")


def linear_gradients(
    model: nn.Module, calib: torch.Tensor, squares: bool, max_len: int = 0, desc: str = "gradients"
) -> dict[str, torch.Tensor]:
    """Per decoder-Linear path: Σ over samples of ∂L/∂W (``squares=False``), or of (∂L/∂W)²
    (``squares=True``: the empirical Fisher information's diagonal, up to a constant).
    ``max_len`` > 0 uses only the first ``max_len`` tokens of each calibration window."""
    if calib is None or calib.ndim != 2 or calib.shape[0] < 1:
        raise EfflmError("this method needs calibration data: a [samples, tokens] batch of token ids")
    linears = dict(decoder_linears(model))
    for lin in linears.values():
        if not isinstance(lin, nn.Linear):
            raise EfflmError(
                f"gradients need plain Linear layers; found {type(lin).__name__} "
                "(apply this method before quantization)"
            )
    saved = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    acc = {path: torch.zeros_like(lin.weight, dtype=torch.float32) for path, lin in linears.items()}
    try:
        for lin in linears.values():
            lin.weight.requires_grad_(True)
        for sample in progress(calib, desc=desc, total=calib.shape[0]):
            ids = sample[:max_len].unsqueeze(0) if max_len > 0 else sample.unsqueeze(0)
            loss = model(ids, labels=ids, use_cache=False).loss
            if not torch.isfinite(loss):
                raise EfflmError("the calibration loss is NaN or inf; cannot compute gradients")
            loss.backward()
            for path, lin in linears.items():
                g = lin.weight.grad.float()
                acc[path] += g * g if squares else g
                lin.weight.grad = None
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(saved.get(name, False))
            p.grad = None
    return acc
