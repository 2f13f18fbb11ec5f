"""Calibrate Before Use: Improving Few-shot Performance of Language Models (contextual
calibration).

arXiv 2102.09690 (Zhao et al., ICML 2021). Algorithm: a few-shot prompt biases the model
towards some labels (majority, recency, common-token bias); the bias is estimated by asking the
same prompt about content-free inputs ("N/A", "", "[MASK]") whose answer should be uniform:
p_cf is the mean of their label distributions. Each test input's label distribution p is then
calibrated as q ∝ W p with W = diag(p_cf)⁻¹ (b = 0), and the prediction is argmax q.
Differs from tonyzhaozh/few-shot-learning: a label's probability is the full likelihood of its
tokens after the prompt (not its first token only), normalized over the label set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from efflm.core.errors import ConfigError, EfflmError
from efflm.core.fields import opt
from efflm.core.registry import MethodConfig, register
from efflm.data_methods.context import DataContext


@dataclass(frozen=True)
class ContextualCalibrationConfig(MethodConfig):
    """``content_free``: the inputs whose label distribution estimates the prompt's bias."""

    method = "contextual_calibration"
    reads: ClassVar[str] = "icl"
    content_free: tuple[str, ...] = opt(
        ("N/A", "", "[MASK]"),
        "content-free inputs (at least one) whose mean label distribution under the prompt estimates its bias",
    )

    def __post_init__(self) -> None:
        if not self.content_free:
            raise ConfigError("contextual_calibration: content_free needs at least one input")


@dataclass(frozen=True)
class ICLItem:
    """A test input's prompt (demonstrations + input, ending where the label goes) and the same
    prompt built around each content-free input."""

    prompt: str
    content_free: tuple[str, ...] = ()


def label_ids(tok: Any, prompt: str, label: str, p: list[int] | None = None) -> tuple[list[int], list[int]]:
    """The prompt's ids (``p``, if already tokenized) and the label's as they continue it (the
    label tokenized alone where tokenizing prompt + label merges across the boundary)."""
    p = tok(prompt, add_special_tokens=False)["input_ids"] if p is None else p
    full = tok(prompt + label, add_special_tokens=False)["input_ids"]
    lab = full[len(p) :] if full[: len(p)] == p else tok(label, add_special_tokens=False)["input_ids"]
    return p, lab


@torch.no_grad()
def label_probs(model: Any, tok: Any, prompt: str, labels: Sequence[str]) -> np.ndarray:
    """The label distribution after ``prompt`` (BOS first where the tokenizer has one): each
    label's full token likelihood, normalized over the labels. The prompt runs once; each label
    continues from its KV cache, cut back after it."""
    bos = [tok.bos_token_id] if getattr(tok, "bos_token_id", None) is not None else []
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    out = model(torch.tensor([bos + p]), use_cache=True)
    cache, first = out.past_key_values, torch.log_softmax(out.logits[0, -1].float(), -1)
    scores = []
    for label in labels:
        lab = label_ids(tok, prompt, label, p)[1]
        lp = first[lab[0]].item()
        if len(lab) > 1:
            rest = model(torch.tensor([lab[:-1]]), past_key_values=cache, use_cache=True).logits[0].float()
            lp += torch.log_softmax(rest, -1).gather(1, torch.tensor(lab[1:])[:, None]).sum().item()
            cache.crop(-(len(lab) - 1))  # back to the prompt's n tokens
        scores.append(lp)
    lp = np.array(scores)
    e = np.exp(lp - lp.max())
    return e / e.sum()


def probs_and_bias(model: Any, tok: Any, item: ICLItem, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """The item's label distribution and its prompt's bias p_cf: the mean distribution over the
    content-free prompts (None without them)."""
    p = label_probs(model, tok, item.prompt, labels)
    cf = [label_probs(model, tok, c, labels) for c in item.content_free]
    return p, (np.mean(cf, axis=0) if cf else None)


def calibrate(p: np.ndarray, p_cf: np.ndarray) -> np.ndarray:
    q = p / np.maximum(p_cf, 1e-12)
    return q / q.sum()


@register(
    ContextualCalibrationConfig,
    family="data",
    title="Calibrate Before Use: Improving Few-shot Performance of Language Models",
    arxiv="2102.09690",
    needs_calibration=False,
    paper="calibrate-before-use",
)
def apply(
    items: Sequence[ICLItem], config: ContextualCalibrationConfig, ctx: DataContext | None = None
) -> list[list[float]]:
    """Each item's calibrated label distribution (over ``ctx.labels``), from the model in ``ctx``."""
    if ctx is None or ctx.model is None or not ctx.labels:
        raise EfflmError("contextual_calibration needs a model and the label words (--labels)")
    out = []
    for item in items:
        p, p_cf = probs_and_bias(ctx.model, ctx.tokenizer, item, ctx.labels)
        out.append((calibrate(p, p_cf) if p_cf is not None else p).tolist())
    return out
