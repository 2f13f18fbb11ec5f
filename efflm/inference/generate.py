"""Text generation on the engine: sampling, stop strings, chat template, left-padded batches.

``probs`` turns logits into the distribution a token is drawn from (temperature, then top-k,
then top-p, as in transformers' logits warpers; temperature 0 is greedy, a one-hot argmax).
Speculative decoding uses the same function for both models, so its acceptance rule
compares exactly the distributions plain sampling would draw from.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from efflm.core.device import synchronize
from efflm.core.errors import EfflmError
from efflm.inference.cache import evicting
from efflm.inference.engine import Engine


@dataclass(frozen=True)
class SamplingConfig:
    """max_new_tokens > 0; temperature ≥ 0 (0 = greedy); top_k ≥ 0 (0 = off); top_p in (0, 1]."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens <= 0:
            raise EfflmError(f"max new tokens must be positive, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise EfflmError(f"temperature must be ≥ 0, got {self.temperature}")
        if self.top_k < 0:
            raise EfflmError(f"top-k must be ≥ 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise EfflmError(f"top-p must be in (0, 1], got {self.top_p}")
        if any(not s for s in self.stop):
            raise EfflmError("stop strings must be non-empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """The sampling distribution over the last dim of ``logits`` (fp32)."""
    logits = logits.float()
    if cfg.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = logits / cfg.temperature
    if cfg.top_k and cfg.top_k < logits.shape[-1]:
        kth = logits.topk(cfg.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    p = logits.softmax(-1)
    if cfg.top_p < 1:
        sp, order = p.sort(dim=-1, descending=True)
        drop = sp.cumsum(-1) - sp >= cfg.top_p  # tokens after the nucleus is full
        p = p.scatter(-1, order, sp.masked_fill(drop, 0.0))
        p = p / p.sum(-1, keepdim=True)
    return p


def draw(p: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """One token per row of ``p [..., V]`` (drawn where ``gen`` lives, the CPU: a seeded draw is the
    same whichever device made ``p``)."""
    flat = p.reshape(-1, p.shape[-1])
    if gen is not None and flat.device != gen.device:
        flat = flat.to(gen.device)
    return torch.multinomial(flat, 1, generator=gen).reshape(p.shape[:-1])


def generator(cfg: SamplingConfig) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(cfg.seed if cfg.seed is not None else int(torch.seed() % 2**63))
    return g


def encode(tok: Any, prompts: list[str], chat: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``[B, T]`` left-padded, and the mask of real tokens."""
    if not prompts:
        raise EfflmError("no prompt given")
    if chat:
        if not getattr(tok, "chat_template", None):
            raise EfflmError("this model's tokenizer has no chat template (drop --chat)")
        rows = [
            tok.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True, return_dict=False
            )
            for p in prompts
        ]
        rows = [list(r["input_ids"]) if isinstance(r, dict) else list(r) for r in rows]
    else:
        rows = [tok(p, add_special_tokens=True)["input_ids"] for p in prompts]
    if any(len(r) == 0 for r in rows):
        raise EfflmError("a prompt encodes to zero tokens")
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    valid = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        valid[i, width - len(r) :] = True
    return ids, valid


@dataclass
class Generation:
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    finish: str = "length"  # "length", "eos" or "stop"


@dataclass
class Timing:
    ttft_s: float = 0.0  # prefill + first token
    decode_s: float = 0.0  # every later token
    new_tokens: int = 0  # decode steps after the first token (per sequence)

    @property
    def tok_s(self) -> float:
        return self.new_tokens / self.decode_s if self.decode_s > 0 else float("nan")


def cache_total(model: Any, prompt_len: int, cfg: SamplingConfig, max_len: int | None) -> int:
    """Slots the full cache needs; raises when the prompt cannot fit."""
    ctx = getattr(model.config, "max_position_embeddings", None) or 1 << 30
    cap = min(max_len or ctx, ctx)
    bounded = evicting(model)
    if prompt_len >= cap and not bounded:
        raise EfflmError(
            f"prompt is {prompt_len} tokens, longer than the KV cache ({cap} tokens); shorten it or raise --max-len"
        )
    return prompt_len + cfg.max_new_tokens if bounded else min(cap, prompt_len + cfg.max_new_tokens)


def _stop_at(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [text.find(s) for s in stops if s in text]
    return min(hits) if hits else None


class TextStream:
    """One sequence's text as its tokens arrive: decoded, cut at the first stop string, and
    streamed to ``on_text(index, delta)`` only where it can no longer turn out to be the start
    of a stop string (such a tail is held back until the next token or ``close``)."""

    def __init__(self, gen: Generation, tok: Any, stops: tuple[str, ...], on_text, index: int = 0):
        self.gen, self.tok, self.stops, self.on_text, self.index = gen, tok, stops, on_text, index
        self.shown = 0

    def push(self, token: int) -> bool:
        """Add a token; True when a stop string ended the text."""
        self.gen.tokens.append(token)
        text = self.tok.decode(self.gen.tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        cut = _stop_at(text, self.stops)
        if cut is not None:
            text, self.gen.finish = text[:cut], "stop"
        self.gen.text = text
        held = (
            0
            if cut is not None
            else max(
                (k for s in self.stops for k in range(1, min(len(s), len(text) + 1)) if text.endswith(s[:k])), default=0
            )
        )
        self._show(len(text) - held)
        return cut is not None

    def close(self) -> None:
        self._show(len(self.gen.text))

    def _show(self, upto: int) -> None:
        if self.on_text is not None and upto > self.shown:
            self.on_text(self.index, self.gen.text[self.shown : upto])
            self.shown = upto


def generate(
    model: Any,
    tok: Any,
    prompts: list[str],
    cfg: SamplingConfig,
    *,
    chat: bool = False,
    max_len: int | None = None,
    engine: Engine | None = None,
    on_text: Callable[[int, str], None] | None = None,
) -> tuple[list[Generation], Timing]:
    """Generate for every prompt at once (left padding); ``on_text(i, delta)`` streams text."""
    ids, valid = encode(tok, prompts, chat)
    return generate_ids(model, tok, ids, valid, cfg, max_len=max_len, engine=engine, on_text=on_text)


@torch.inference_mode()
def generate_ids(
    model: Any,
    tok: Any,
    ids: torch.Tensor,
    valid: torch.Tensor,
    cfg: SamplingConfig,
    *,
    max_len: int | None = None,
    engine: Engine | None = None,
    on_text: Callable[[int, str], None] | None = None,
) -> tuple[list[Generation], Timing]:
    engine = engine or Engine(model)
    B, T = ids.shape
    total = cache_total(model, T, cfg, max_len)
    new = min(cfg.max_new_tokens, total - T)
    engine.start(B, total)
    gen = generator(cfg)
    eos = {tok.eos_token_id} if tok is not None and tok.eos_token_id is not None else set()
    outs = [Generation(prompt_tokens=int(v.sum())) for v in valid]
    streams = None if tok is None else [TextStream(g, tok, cfg.stop, on_text, i) for i, g in enumerate(outs)]
    done = [False] * B
    timing = Timing()
    t0 = time.perf_counter()
    logits = engine.feed(ids, valid)[:, -1]
    for step in range(new):
        nxt = logits.argmax(-1) if cfg.greedy else draw(probs(logits, cfg), gen)
        if step == 0:
            synchronize(nxt.device)  # a GPU's queued work counts in the time to the first token
            timing.ttft_s = time.perf_counter() - t0
            t0 = time.perf_counter()
        for i in range(B):
            if done[i]:
                continue
            t = int(nxt[i])
            if t in eos:
                done[i], outs[i].finish = True, "eos"
                continue
            if streams is None:  # ids only (the harness)
                outs[i].tokens.append(t)
            elif streams[i].push(t):
                done[i] = True
        if all(done) or step == new - 1:
            break
        logits = engine.feed(nxt[:, None])[:, -1]
        timing.new_tokens += 1
    timing.decode_s = time.perf_counter() - t0 if timing.new_tokens else 0.0
    for s in streams or []:
        s.close()
    return outs, timing
