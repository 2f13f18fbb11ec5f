"""What the prompt compressors share: a prompt's parts (instruction, context, question), its
token budget at a compression ratio, the lexical units (words or sentences) of a text with the
tokens each covers, and per-token self-information over a long text in windows.

Only the context is compressed: the instruction and the question are kept whole (a compressor
never drops the question), and the context gets what the budget leaves.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from efflm.core.errors import ConfigError
from efflm.data_methods.lm_score import bos, self_information

SEP = "\n\n"
WINDOW, OVERLAP = 1024, 256  # self-information is computed in windows, each after the previous 256 tokens


@dataclass(frozen=True)
class PromptParts:
    instruction: str = ""
    context: str = ""
    question: str = ""

    def join(self, context: str | None = None) -> str:
        ctx = self.context if context is None else context
        return SEP.join(p for p in (self.instruction, ctx, self.question) if p)


def check_ratio(name: str, ratio: float) -> None:
    if not ratio >= 1:
        raise ConfigError(f"{name}: ratio must be ≥ 1 (the prompt's tokens ÷ the compressed prompt's), got {ratio}")


def n_tokens(tok: Any, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"]) if text else 0


def budgets(tok: Any, parts: PromptParts, ratio: float) -> tuple[int, int]:
    """(the whole prompt's token budget, what it leaves the context after the kept parts)."""
    target = math.floor(n_tokens(tok, parts.join()) / ratio)
    return target, max(0, target - n_tokens(tok, parts.join(context="")) - (n_tokens(tok, SEP) if parts.context else 0))


_UNITS = {
    "word": re.compile(r"\s*\S+"),
    "sentence": re.compile(r"\s*[^.!?\n]+(?:[.!?]+[\"')\]]*|\n|$)|\s*[.!?\n]+"),
}


def unit_spans(text: str, unit: str) -> list[tuple[int, int]]:
    """Character spans of the text's words or sentences, each with its leading whitespace; they
    tile the text (trailing whitespace joins the last span)."""
    spans = [m.span() for m in _UNITS[unit].finditer(text) if m.end() > m.start()]
    if not spans:
        return [(0, len(text))] if text else []
    spans[-1] = (spans[-1][0], len(text))
    return spans


def token_units(tok: Any, text: str, unit: str) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """The text's token ids, the unit index of each token (by where the token starts), and the spans."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = unit_spans(text, unit)
    owner, u = [], 0
    for start, _ in enc["offset_mapping"]:
        while u + 1 < len(spans) and start >= spans[u + 1][0]:
            u += 1
        owner.append(u)
    return enc["input_ids"], owner, spans


def windowed_self_information(model: Any, tok: Any, ids: Sequence[int], prefix: Sequence[int] = ()) -> list[float]:
    """Self-information of every token of ``ids`` after ``prefix`` (BOS when empty), computed in
    windows of WINDOW tokens, each after the OVERLAP tokens before it."""
    prefix = list(prefix) or bos(tok)
    out: list[float] = []
    for s in range(0, len(ids), WINDOW):
        before = (list(prefix) + list(ids[:s]))[-OVERLAP:] if (prefix or s) else []
        out += self_information(model, ids[s : s + WINDOW], before)
    return out


def fit(tok: Any, pieces: Sequence[str], scores: Sequence[float], budget: int,
        costs: Sequence[int] | None = None) -> list[int]:  # fmt: skip
    """Indices of the pieces kept, in order: the lowest-scoring pieces are dropped until the kept
    pieces' tokens (``costs``, else each piece tokenized alone) fit the budget; dropped pieces
    that still fit come back, best first; then the lowest-scoring are dropped while the
    concatenation re-tokenizes into more than ``budget`` tokens."""
    costs = list(costs) if costs is not None else [n_tokens(tok, p) for p in pieces]
    order = sorted(range(len(pieces)), key=lambda i: (scores[i], -i))  # lowest first; ties drop the later
    kept, total, k = set(range(len(pieces))), sum(costs), 0
    while total > budget and k < len(order):
        kept.discard(order[k])
        total -= costs[order[k]]
        k += 1
    for i in reversed(order[:k]):  # a dropped piece that still fits comes back, best first
        if total + costs[i] <= budget:
            kept.add(i)
            total += costs[i]
    by_score = [i for i in order if i in kept]
    while kept and n_tokens(tok, "".join(pieces[i] for i in sorted(kept))) > budget:
        kept.discard(by_score.pop(0))
    return sorted(kept)


def fit_prompt(tok: Any, parts: PromptParts, target: int, ctx_budget: int, compress_context) -> str:
    """The prompt with its context compressed to ``ctx_budget`` tokens by ``compress_context(b)``,
    the context budget lowered by any overshoot until the whole prompt re-tokenizes into at most
    ``target`` tokens (or the context is gone: instruction and question are never cut)."""
    b = ctx_budget
    while True:
        out = parts.join(context=compress_context(b).strip())
        over = n_tokens(tok, out) - target
        if over <= 0 or b == 0:
            return out
        b = max(0, b - over)


def split_question(prompt: str) -> PromptParts:
    """A plain prompt as parts: its last non-empty line is the question (kept whole), the rest
    the context (``efflm generate --compress-prompt``)."""
    lines = prompt.rstrip().split("\n")
    if len(lines) < 2:
        return PromptParts(context=prompt)
    return PromptParts(context="\n".join(lines[:-1]).rstrip(), question=lines[-1])
