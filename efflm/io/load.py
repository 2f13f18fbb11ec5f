"""``load(spec)``: every model spec efflm accepts, compressed efflm directories included."""

from __future__ import annotations

from typing import Any

import torch

from efflm.models.sources import DEFAULT_MODEL, load_plain, ready, resolve


def load(spec: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """Return ``(model, tokenizer)``: a transformers causal LM in eval mode, its compressed
    modules (if saved by efflm) rebuilt from the file, a MoE block's experts as one Linear triple
    each (``efflm.nn.experts``)."""
    from efflm.nn.experts import unstack_experts

    src = resolve(spec)
    if src.kind != "efflm":
        model, tok = load_plain(src, dtype)
        return unstack_experts(model), tok
    from efflm.io.save import load_compressed

    model, tok = load_compressed(src.path)
    return ready(model), tok
