"""Compressing Context to Enhance Inference Efficiency of Large Language Models (Selective
Context).

arXiv 2310.06201 (Li et al., EMNLP 2023). Algorithm: a small causal LM gives every token of the
context its self-information −log p(token | preceding text); tokens are merged into lexical
units (phrases or sentences) whose information is the sum of their tokens'; the units with the
least information — the most predictable, hence redundant, ones — are dropped until the
context is reduced by the wanted ratio, and the rest are kept in order.
Differs from liyucheng09/Selective_Context: the units are words or sentences (the paper's
phrase level uses spaCy noun chunks); the ratio is a token budget for the whole prompt —
instruction and question kept whole, the context given what remains — rather than a percentile
of units; self-information comes from any efflm model (compressed ones included), in windows
of 1,024 tokens after the instruction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from efflm.core.errors import ConfigError, EfflmError
from efflm.core.fields import opt
from efflm.core.registry import MethodConfig, register
from efflm.data_methods.context import DataContext
from efflm.data_methods.prompt_parts import (
    PromptParts,
    budgets,
    check_ratio,
    fit,
    fit_prompt,
    token_units,
    windowed_self_information,
)


@dataclass(frozen=True)
class SelectiveContextConfig(MethodConfig):
    """``ratio``: the prompt's tokens ÷ the compressed prompt's (≥ 1); ``unit``: word or sentence."""

    method = "selective_context"
    reads: ClassVar[str] = "prompt"
    ratio: float = opt(2.0, "the prompt's tokens ÷ the compressed prompt's (≥ 1)")
    unit: str = opt("sentence", "what is kept or dropped whole, by its summed self-information: word or sentence")

    def __post_init__(self) -> None:
        check_ratio("selective_context", self.ratio)
        if self.unit not in ("word", "sentence"):
            raise ConfigError(f"selective_context: unit must be word or sentence, got {self.unit!r}")


def compress(model, tok, parts: PromptParts, config: SelectiveContextConfig) -> str:
    target, ctx_budget = budgets(tok, parts, config.ratio)
    if not parts.context:
        return parts.join()
    ids, owner, spans = token_units(tok, parts.context, config.unit)
    prefix = tok(parts.instruction, add_special_tokens=False)["input_ids"] if parts.instruction else []
    info = windowed_self_information(model, tok, ids, prefix)
    unit_info = [0.0] * len(spans)
    unit_cost = [0] * len(spans)
    for u, x in zip(owner, info):
        unit_info[u] += x
        unit_cost[u] += 1
    pieces = [parts.context[a:b] for a, b in spans]
    return fit_prompt(
        tok, parts, target, ctx_budget, lambda b: "".join(pieces[i] for i in fit(tok, pieces, unit_info, b, unit_cost))
    )


@register(
    SelectiveContextConfig,
    family="data",
    title="Compressing Context to Enhance Inference Efficiency of Large Language Models",
    arxiv="2310.06201",
    needs_calibration=False,
    paper="selective-context",
)
def apply(prompts: Sequence[PromptParts], config: SelectiveContextConfig, ctx: DataContext | None = None) -> list[str]:
    """Each prompt compressed by the small LM in ``ctx``."""
    if ctx is None or ctx.model is None:
        raise EfflmError("selective_context needs a small LM to score tokens (--model)")
    return [compress(ctx.model, ctx.tokenizer, p, config) for p in prompts]
