"""Naive truncation: the prompt-compression baseline every compressor is measured against
(LLMLingua's and Selective Context's tables). The context is cut to its budget — its first
tokens kept (``keep: start``) or its last (``keep: end``); instruction and question are kept
whole, as the compressors keep them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from efflm.core.errors import ConfigError, EfflmError
from efflm.core.fields import opt
from efflm.core.registry import MethodConfig, register
from efflm.data_methods.context import DataContext
from efflm.data_methods.prompt_parts import PromptParts, budgets, check_ratio, fit_prompt


@dataclass(frozen=True)
class TruncateConfig(MethodConfig):
    """``ratio``: the prompt's tokens ÷ the truncated prompt's (≥ 1); ``keep``: start or end."""

    method = "truncate"
    reads: ClassVar[str] = "prompt"
    ratio: float = opt(2.0, "the prompt's tokens ÷ the truncated prompt's (≥ 1)")
    keep: str = opt("start", "which end of the context is kept: start or end")

    def __post_init__(self) -> None:
        check_ratio("truncate", self.ratio)
        if self.keep not in ("start", "end"):
            raise ConfigError(f"truncate: keep must be start or end, got {self.keep!r}")


def truncate(tok, parts: PromptParts, config: TruncateConfig) -> str:
    target, ctx_budget = budgets(tok, parts, config.ratio)
    ids = tok(parts.context, add_special_tokens=False)["input_ids"]

    def context_at(b: int) -> str:
        if b == 0:
            return ""
        return tok.decode(ids[:b] if config.keep == "start" else ids[len(ids) - b :])

    return fit_prompt(tok, parts, target, ctx_budget, context_at)


@register(
    TruncateConfig,
    family="data",
    title="Naive prompt truncation (baseline)",
    arxiv=None,
    needs_calibration=False,
    paper="baseline-prompt-truncation",
)
def apply(prompts: Sequence[PromptParts], config: TruncateConfig, ctx: DataContext | None = None) -> list[str]:
    if ctx is None or ctx.tokenizer is None:
        raise EfflmError("truncate needs the tokenizer that counts the budget (--model)")
    return [truncate(ctx.tokenizer, p, config) for p in prompts]
