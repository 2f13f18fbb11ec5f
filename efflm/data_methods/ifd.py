"""From Quantity to Quality: Boosting LLM Performance with Self-Guided Data Selection for
Instruction Tuning (Cherry; the IFD score).

arXiv 2308.12032 (Li et al., 2023). Algorithm: for an instruction Q and its answer A, the
Instruction-Following Difficulty is IFD = s(A|Q) / s(A), where s(A|Q) is the model's mean
cross-entropy over A's tokens after Q and s(A) over A's tokens alone, both exponentiated
(perplexities); a high IFD marks a pair whose instruction helps the model little, i.e. one it
still has to learn. The pairs with the highest IFD are kept; IFD ≥ 1 (the instruction does
not help at all) marks a misaligned pair, excluded.
Differs from tianyi-lab/Cherry_LLM: the model is any efflm model (the paper first trains a
"brief experience" model on a clustered sample); Q goes through the tokenizer's chat template
(efflm's fine-tuning encoding); s(A) is scored after BOS where the tokenizer has one, so both
scores cover the same tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from efflm.core.errors import ConfigError, EfflmError
from efflm.core.fields import opt
from efflm.core.progress import progress
from efflm.core.registry import MethodConfig, register
from efflm.data_methods.context import DataContext
from efflm.data_methods.lm_score import bos, mean_nll
from efflm.datasets.finetune import encode_chat


@dataclass(frozen=True)
class IFDConfig(MethodConfig):
    """``max_len`` tokens per pair (the prompt is cut from the left to fit);
    ``drop_misaligned``: IFD ≥ 1 ranks last."""

    method = "ifd"
    reads: ClassVar[str] = "pair"
    max_len: int = opt(512, "tokens scored per pair (≥ 4); the prompt is cut from the left to fit")
    drop_misaligned: bool = opt(True, "pairs with IFD ≥ 1 (the instruction does not help) rank last")

    def __post_init__(self) -> None:
        if self.max_len < 4:
            raise ConfigError(f"ifd: max_len must be ≥ 4, got {self.max_len}")


def ifd_score(model, tokenizer, prompt: str, completion: str, max_len: int) -> float:
    ids, n_prompt = encode_chat(tokenizer, prompt, completion)
    answer = ids[n_prompt:][: max_len // 2]
    context = ids[:n_prompt][-(max_len - len(answer)) :]
    conditional = mean_nll(model, context + answer, len(context))
    alone = bos(tokenizer) + answer
    if len(alone) < 2:  # one answer token and no BOS: nothing to score it after
        return float("nan")
    direct = mean_nll(model, alone, len(alone) - len(answer) or 1)
    return math.exp(conditional - direct)


@register(
    IFDConfig,
    family="data",
    title="From Quantity to Quality: Boosting LLM Performance with Self-Guided Data Selection for Instruction Tuning",
    arxiv="2308.12032",
    needs_calibration=False,
    paper="cherry-ifd",
)
def apply(pairs: Sequence[tuple[str, str]], config: IFDConfig, ctx: DataContext | None = None) -> list[float]:
    """One score per (prompt, completion) pair: its IFD (keep the highest; misaligned pairs last)."""
    if ctx is None or ctx.model is None:
        raise EfflmError("ifd needs a scoring model (--model)")
    out = []
    for prompt, completion in progress(pairs, "IFD", total=len(pairs)):
        s = ifd_score(ctx.model, ctx.tokenizer, prompt, completion, config.max_len)
        out.append(-s if config.drop_misaligned and s >= 1 else s)
    return out
