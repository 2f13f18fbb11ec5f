"""LLMLingua: Compressing Prompts for Accelerated Inference of Large Language Models (with
LongLLMLingua's question-aware coarse ranking).

arXiv 2310.05736 (Jiang et al., EMNLP 2023); the question-aware ranking is from LongLLMLingua,
arXiv 2310.06839. Algorithm: a budget controller splits the token budget between the
instruction, the context (demonstrations, documents) and the question; a coarse stage keeps
whole context chunks — ranked by how well each lets the small LM predict the question,
−mean log p(question | chunk) — up to a multiple of the context's budget; then iterative
token-level compression walks the kept context in segments, scores each segment's tokens by
self-information conditioned on the already compressed prefix, and keeps the most informative
tokens of each segment at the budget's rate.
Differs from microsoft/LLMLingua: the instruction and question are kept whole (no dynamic
ratios for them); chunks are the context's paragraphs (else sentences); no distribution
alignment of the small model to the target LLM; the small LM is any efflm model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from efflm.core.errors import ConfigError, EfflmError
from efflm.core.fields import opt
from efflm.core.registry import MethodConfig, register
from efflm.data_methods.context import DataContext
from efflm.data_methods.lm_score import bos, mean_nll, self_information
from efflm.data_methods.prompt_parts import PromptParts, budgets, check_ratio, fit_prompt, n_tokens, unit_spans


@dataclass(frozen=True)
class LLMLinguaConfig(MethodConfig):
    """``ratio``: the prompt's tokens ÷ the compressed prompt's (≥ 1); ``coarse``: chunks kept up to
    this multiple of the context budget before token-level compression (1 turns the coarse stage
    into the whole selection); ``segment``: tokens per step of the iterative stage."""

    method = "llmlingua"
    reads: ClassVar[str] = "prompt"
    ratio: float = opt(2.0, "the prompt's tokens ÷ the compressed prompt's (≥ 1)")
    coarse: float = opt(
        2.0,
        "the coarse stage keeps context chunks up to this multiple of the context's budget (≥ 1; 1: the coarse "
        "stage is the whole selection)",
    )
    segment: int = opt(100, "tokens per step of the iterative token-level stage (≥ 8)")
    question_aware: bool = opt(
        True, "rank chunks by how well they predict the question (LongLLMLingua); false: by their own perplexity"
    )

    def __post_init__(self) -> None:
        check_ratio("llmlingua", self.ratio)
        if self.coarse < 1:
            raise ConfigError(f"llmlingua: coarse must be ≥ 1, got {self.coarse}")
        if self.segment < 8:
            raise ConfigError(f"llmlingua: segment must be ≥ 8, got {self.segment}")


def chunks(text: str) -> list[str]:
    """The context's paragraphs (blank-line separated), or its sentences if it has one paragraph."""
    paras = [p for p in re.split(r"(?<=\n)\s*\n", text) if p.strip()]
    if len(paras) > 1:
        return paras
    return [text[a:b] for a, b in unit_spans(text, "sentence")]


def rank_chunks(model, tok, pieces: Sequence[str], question: str, aware: bool) -> list[float]:
    """Higher is more worth keeping: −mean NLL of the question after the chunk (question-aware),
    or the chunk's own mean NLL (its perplexity: less predictable text carries more)."""
    q = tok(question, add_special_tokens=False)["input_ids"] if question else []
    out = []
    for p in pieces:
        ids = bos(tok) + tok(p, add_special_tokens=False)["input_ids"]
        if aware and q:
            out.append(-mean_nll(model, ids + q, len(ids)))
        else:
            out.append(mean_nll(model, ids, 1) if len(ids) > 1 else 0.0)
    return out


def coarse_select(tok, pieces: Sequence[str], scores: Sequence[float], budget: int) -> list[int]:
    """Best-ranked chunks while they fit ``budget`` tokens (at least one), in their original order."""
    kept, total = [], 0
    for i in sorted(range(len(pieces)), key=lambda i: (-scores[i], i)):
        cost = n_tokens(tok, pieces[i])
        if kept and total + cost > budget:
            continue
        kept.append(i)
        total += cost
    return sorted(kept)


def token_level(
    model, tok, prefix: list[int], ids: list[int], budget: int, segment: int
) -> tuple[list[int], list[float]]:
    """Iterative compression: each segment's tokens scored after the compressed prefix so far;
    the most informative ``budget / len(ids)`` of each segment kept, in order. Returns the kept
    tokens and their self-information."""
    rate = min(1.0, budget / max(1, len(ids)))
    kept_ids: list[int] = []
    kept_info: list[float] = []
    for s in range(0, len(ids), segment):
        seg = ids[s : s + segment]
        info = self_information(model, seg, (prefix + kept_ids)[-1024:] or bos(tok))
        top = sorted(sorted(range(len(seg)), key=lambda i: -info[i])[: round(rate * len(seg))])
        kept_ids += [seg[i] for i in top]
        kept_info += [info[i] for i in top]
    return kept_ids, kept_info


def compress(model, tok, parts: PromptParts, config: LLMLinguaConfig) -> str:
    target, ctx_budget = budgets(tok, parts, config.ratio)
    if not parts.context:
        return parts.join()
    pieces = chunks(parts.context)
    scores = rank_chunks(model, tok, pieces, parts.question, config.question_aware)
    prefix = bos(tok) + (tok(parts.instruction, add_special_tokens=False)["input_ids"] if parts.instruction else [])

    first: list = []  # the token-level pass at the first budget; a lower budget drops its least informative tokens

    def context_at(b: int) -> str:
        if b == 0:
            return ""
        if not first:
            kept = coarse_select(tok, pieces, scores, int(config.coarse * b))
            ids = tok("".join(pieces[i] for i in kept), add_special_tokens=False)["input_ids"]
            first.extend(token_level(model, tok, prefix, ids, b, config.segment))
        ids, info = first
        keep = sorted(sorted(range(len(ids)), key=lambda i: -info[i])[:b])
        return tok.decode([ids[i] for i in keep])

    return fit_prompt(tok, parts, target, ctx_budget, context_at)


@register(
    LLMLinguaConfig,
    family="data",
    title="LLMLingua: Compressing Prompts for Accelerated Inference of Large Language Models",
    arxiv="2310.05736",
    needs_calibration=False,
    paper="llmlingua",
)
def apply(prompts: Sequence[PromptParts], config: LLMLinguaConfig, ctx: DataContext | None = None) -> list[str]:
    """Each prompt compressed by the small LM in ``ctx``."""
    if ctx is None or ctx.model is None:
        raise EfflmError("llmlingua needs a small LM (--model)")
    return [compress(ctx.model, ctx.tokenizer, p, config) for p in prompts]
