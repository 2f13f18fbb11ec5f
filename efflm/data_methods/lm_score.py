"""Per-row scores under a causal LM, shared by the selection methods that read a model
(perplexity filtering, IFD): mean negative log-likelihood of a row's tokens, alone or after a
prompt. One row per forward, no padding, so a row's score never depends on its neighbours."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from efflm.core.progress import progress


@torch.no_grad()
def mean_nll(model: Any, ids: Sequence[int], start: int) -> float:
    """Mean NLL (nats/token) of ``ids[start:]`` given the tokens before them (``start ≥ 1``)."""
    if not 1 <= start < len(ids):
        raise ValueError(f"start {start} outside [1, {len(ids)})")
    x = torch.tensor([list(ids)])
    logits = model(x).logits[0, start - 1 : -1].float()
    return F.cross_entropy(logits, x[0, start:]).item()


def bos(tokenizer: Any) -> list[int]:
    return [tokenizer.bos_token_id] if getattr(tokenizer, "bos_token_id", None) is not None else []


def text_nll(model: Any, tokenizer: Any, texts: Sequence[str], max_len: int) -> list[float]:
    """Mean NLL of each text's first ``max_len`` tokens (after BOS where the tokenizer has one; a
    text of one token with no BOS scores nan)."""
    out = []
    for t in progress(texts, "scoring", total=len(texts)):
        ids = (bos(tokenizer) + tokenizer(t, add_special_tokens=False)["input_ids"])[:max_len]
        out.append(mean_nll(model, ids, 1) if len(ids) > 1 else float("nan"))
    return out


@torch.no_grad()
def self_information(model: Any, ids: Sequence[int], prefix: Sequence[int] = ()) -> list[float]:
    """−log p(token | everything before it) for each of ``ids``, after ``prefix`` (nats). The
    first token with an empty prefix has no context: it gets +inf (always kept)."""
    full = list(prefix) + list(ids)
    if len(full) < 2:
        return [float("inf")] * len(ids)
    x = torch.tensor([full])
    logp = torch.log_softmax(model(x).logits[0, :-1].float(), dim=-1)
    info = (-logp.gather(1, x[0, 1:, None])[:, 0]).tolist()
    info = [float("inf")] + info  # info[i] for full[i]
    return info[len(prefix) :]
