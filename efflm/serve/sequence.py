"""One completion request as the scheduler holds it, and what happens to it token by token:
sampling after its bias, penalties and grammar mask, log-probabilities, text and finishing."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from efflm.inference.cache import KVCache
from efflm.inference.generate import Generation, SamplingConfig, TextStream, draw, probs
from efflm.inference.grammar import Constraint
from efflm.inference.logits_process import Adjust, adjust, token_logprobs


@dataclass(eq=False)
class Request:
    """One completion (``n`` of them sharing the prompt's prefill). ``emit(kind, value)`` is called
    from the batcher thread: ("text", (index, delta, logprobs)) as text becomes final, then ("done",
    (index, Generation, logprobs)) once per index, or ("error", message). ``logprobs`` are the
    (token, log-probability, [(alternative, log-probability)]) of the tokens not reported yet, when
    ``logprobs`` is set (the number of alternatives); ``prompt_logprobs`` (with ``echo``) those of
    the prompt's tokens after the first."""

    ids: list[int]
    sampling: SamplingConfig
    emit: Callable[[str, Any], None]
    n: int = 1
    logprobs: int | None = None
    adjust: Adjust = field(default_factory=Adjust)
    grammar: str | None = None
    echo: bool = False
    index: int = 0
    adapter: str | None = None  # a named LoRA adapter (serve.adapters), None: the base
    prompt_logprobs: list | None = None
    cancelled: bool = False
    gen: Generation = field(default_factory=Generation)
    t_submit: float = field(default_factory=time.perf_counter)
    t_first: float | None = None
    t_last: float | None = None
    _stream: TextStream | None = None
    _rng: torch.Generator | None = None
    _cache: KVCache | None = None  # the prompt's own cache while it is prefilled
    _pos: torch.Tensor | None = None
    _done: int = 0  # prompt tokens prefilled
    _last: int = 0  # the token to feed next
    _constraint: Constraint | None = None
    _lps: list = field(default_factory=list)  # log-probabilities not emitted yet
    _drafts: Any = None  # inference.speculative.DraftLength of this row (in-batch speculation)
    _children: list = field(default_factory=list)  # indices 1..n-1, made when the prompt is prefilled

    def taken(self) -> list:
        out, self._lps = self._lps, []
        return out


def prompt_logprobs(req: Request, logits: torch.Tensor, start: int) -> None:
    """Log-probabilities of the prompt's tokens start+1.. from this chunk's logits [T, V]."""
    req.prompt_logprobs = req.prompt_logprobs or []
    for j in range(logits.shape[0]):
        target = start + j + 1
        if target < len(req.ids):
            req.prompt_logprobs.append((req.ids[target], *token_logprobs(logits[j], req.ids[target], req.logprobs)))


def emit_token(req: Request, logits: torch.Tensor, eos: set[int], max_len: int) -> bool:
    """Sample the next token of ``req`` (after its bias, penalties and grammar mask); True when
    it finished (eos, stop string, grammar complete or length)."""
    cfg = req.sampling
    x = logits
    if req.adjust.active or req._constraint is not None:
        x = adjust(logits, req.adjust, req.gen.tokens)
        if req._constraint is not None:
            req._constraint.mask(x)
    t = int(x.argmax(-1)) if cfg.greedy else int(draw(probs(x[None], cfg), req._rng)[0])
    if req.logprobs is not None:
        req._lps.append((t, *token_logprobs(logits, t, req.logprobs)))
    now = time.perf_counter()
    req.t_first = req.t_first or now
    req.t_last = now
    if t in eos:
        req.gen.finish = "eos"
        return True
    if req._constraint is not None:
        req._constraint.advance(t)
    if req._stream.push(t):
        return True
    if req._constraint is not None and req._constraint.done:
        req.gen.finish = "stop"
        return True
    req._last = t
    # the prompt plus every sampled token must fit in the cache (checked at admission too)
    return len(req.gen.tokens) >= cfg.max_new_tokens or len(req.ids) + len(req.gen.tokens) >= max_len


def finish(req: Request) -> None:
    req._stream.close()
    if req.gen.finish not in ("eos", "stop"):
        req.gen.finish = "length"
    req.emit("done", (req.index, req.gen, req.taken()))
