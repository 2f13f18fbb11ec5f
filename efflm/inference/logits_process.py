"""Per-request changes to one row of logits before sampling, and the log-probabilities reported.

OpenAI's semantics (also vLLM's and llama.cpp's server's): ``logit_bias`` adds a constant to
chosen token ids; ``presence_penalty`` subtracts a constant from every token already generated,
``frequency_penalty`` that constant times how often it was (the prompt does not count). Log
probabilities are those of the model's own distribution — ``log_softmax`` of the raw logits,
before bias, penalties, temperature or a grammar's mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Adjust:
    presence: float = 0.0
    frequency: float = 0.0
    bias: tuple[tuple[int, float], ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.presence or self.frequency or self.bias)


def adjust(logits: torch.Tensor, adj: Adjust, generated: list[int]) -> torch.Tensor:
    """``logits [V]`` (a new tensor) with ``adj`` applied given the tokens generated so far."""
    out = logits.float().clone()
    if generated and (adj.presence or adj.frequency):
        counts = torch.bincount(torch.tensor(generated), minlength=out.shape[-1])[: out.shape[-1]].float()
        out -= adj.frequency * counts + adj.presence * (counts > 0).float()
    if adj.bias:
        ids = torch.tensor([i for i, _ in adj.bias])
        out[ids] += torch.tensor([b for _, b in adj.bias])
    return out


def token_logprobs(logits: torch.Tensor, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """The model's log-probability of ``token`` and its ``top`` most likely alternatives, from raw
    ``logits [V]``."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    alts = []
    if top:
        vals, ids = lp.topk(top)
        alts = [(int(i), float(v)) for i, v in zip(ids, vals)]
    return float(lp[token]), alts
