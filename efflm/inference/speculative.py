"""Fast Inference from Transformers via Speculative Decoding (Leviathan et al., ICML 2023), arXiv 2211.17192.

Algorithm: a cheap drafter proposes k tokens x_1..x_k with distributions q_i; the target
scores them all in one forward, giving p_1..p_{k+1}. Token x_i is accepted with probability
min(1, p_i(x_i) / q_i(x_i)); at the first rejection a token is drawn from the residual
norm(max(0, p_i − q_i)) and the rest is dropped; if all k pass, one more is drawn from
p_{k+1}. The output has exactly the target's distribution (and, greedy, its exact tokens).

Drafters here: another efflm model with the same vocabulary (a compressed copy of the
target, or the target's first n layers, sharing its weights), or prompt lookup (the tokens
that followed the latest earlier occurrence of the last n-gram: a deterministic draft, q is
one-hot). Differs from the reference description: batch 1; the rejected tail is dropped
from both static caches by moving their cursor back (``Engine.rollback``); the draft length
adapts to acceptance (``DraftLength``) and prompt lookup may ignore short n-gram matches
(``min_ngram``), so drafting where it does not help costs little.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from efflm.core.errors import ConfigError, EfflmError
from efflm.core.fields import opt
from efflm.core.registry import MethodConfig, config_from_dict, register
from efflm.inference.engine import Engine
from efflm.inference.generate import Generation, SamplingConfig, Timing, cache_total, draw, generator, probs

SPEC_ATTR = "efflm_speculative"


def accept(p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor, gen: torch.Generator) -> tuple[int, int]:
    """The acceptance rule. ``p [k+1, V]`` target, ``q [k, V]`` draft distributions, ``tokens [k]``
    drafted. Returns (number accepted n, the token that follows them); decided on the CPU, where
    ``gen`` draws."""
    p, q = p.cpu(), q.cpu()
    k = tokens.shape[0]
    for i in range(k):
        x = int(tokens[i])
        ratio = p[i, x] / q[i, x].clamp(min=1e-30)
        if torch.rand((), generator=gen) < ratio:
            continue
        residual = (p[i] - q[i]).clamp(min=0)
        total = residual.sum()
        nxt = draw(residual / total, gen) if total > 0 else draw(p[i], gen)
        return i, int(nxt)
    return k, int(draw(p[k], gen))


def lookup(ctx: list[int], k: int, max_ngram: int = 3, min_ngram: int = 1) -> list[int]:
    """Prompt lookup: the ≤ k tokens after the latest earlier match of the last n-gram (n = max..min)."""
    for n in range(min(max_ngram, len(ctx) - 1), min_ngram - 1, -1):
        tail = ctx[-n:]
        for start in range(len(ctx) - n - 1, -1, -1):
            if ctx[start : start + n] == tail:
                return ctx[start + n : start + n + k]
    return []


def first_layers(model: Any, n: int) -> Any:
    """The target's first ``n`` decoder layers, final norm and head, sharing its weights."""
    from efflm.models.arch import decoder_layers, layout_for, set_module

    total = len(decoder_layers(model))
    if not 0 < n < total:
        raise EfflmError(f"draft layers must be between 1 and {total - 1}, got {n}")
    draft = copy.copy(model)
    draft._modules = dict(model._modules)
    path = layout_for(model.config.model_type).layers
    parent = path.rpartition(".")[0]
    inner = copy.copy(model.get_submodule(parent))
    inner._modules = dict(inner._modules)
    set_module(draft, parent, inner)
    set_module(draft, path, torch.nn.ModuleList(list(decoder_layers(model))[:n]))
    draft.config = copy.deepcopy(model.config)
    draft.config.num_hidden_layers = n
    return draft


def check_compatible(target: Any, draft: Any, tok: Any = None, draft_tok: Any = None) -> None:
    """Same vocabulary (models or their HF configs) and, if given, the same tokenizer."""
    tv, dv = (getattr(m, "config", m).vocab_size for m in (target, draft))
    if dv != tv:
        raise EfflmError(
            f"draft model's vocabulary ({dv} tokens) differs from the "
            f"target's ({tv}); speculative decoding needs the same tokenizer"
        )
    if tok is not None and draft_tok is not None and tok.get_vocab() != draft_tok.get_vocab():
        raise EfflmError(
            "draft model's tokenizer differs from the target's; speculative decoding needs the same tokenizer"
        )


@dataclass
class DraftLength:
    """Adaptive draft length (the heuristic of transformers' assisted generation): after a fully
    accepted draft propose two more next time, after a rejection one fewer, within [1, k_max].
    A one-token draft rejected outright pauses drafting for 1, 2, 4 ... 16 plain steps (doubling
    while such failures repeat, reset by a fully accepted draft), so text with nothing to copy
    costs about what plain decoding costs."""

    k_max: int
    k: int = 0
    pause: int = 0  # plain steps left before the next draft
    backoff: int = 0  # the length of the next pause
    proposed: int = 0  # draft tokens verified so far
    accepted: int = 0  # of which accepted

    def __post_init__(self) -> None:
        self.k = self.k or self.k_max

    def allowed(self) -> int:
        """Tokens to draft this step (0 while paused)."""
        if self.pause:
            self.pause -= 1
            return 0
        return self.k

    def update(self, proposed: int, accepted: int) -> None:
        self.proposed, self.accepted = self.proposed + proposed, self.accepted + accepted
        if not proposed:
            return
        if accepted == proposed:
            self.k, self.backoff = min(self.k_max, self.k + 2), 0
            return
        self.k = max(1, self.k - 1)
        if accepted == 0 and self.k == 1:
            self.backoff = min(16, max(1, 2 * self.backoff))
            self.pause = self.backoff


@dataclass
class SpecStats:
    proposed: int = 0
    accepted: int = 0
    target_steps: int = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


@torch.inference_mode()
def speculative_ids(
    target: Any,
    prompt: list[int],
    cfg: SamplingConfig,
    *,
    draft: Any = None,
    k: int = 4,
    max_ngram: int = 3,
    min_ngram: int = 1,
    adaptive: bool = False,
    eos: int | None = None,
    max_len: int | None = None,
    on_token: Callable[[int], bool] | None = None,
) -> tuple[list[int], Timing, SpecStats]:
    """Generate after ``prompt`` (token ids, batch 1). Without ``draft``, prompt lookup drafts
    (n-gram matches of ``min_ngram``..``max_ngram`` tokens); ``adaptive``: the draft length
    follows acceptance (``DraftLength``), up to ``k``. ``on_token(t)`` may return True to stop."""
    if k < 1:
        raise EfflmError(f"draft length k must be ≥ 1, got {k}")
    if draft is not None:
        check_compatible(target, draft)
    total = cache_total(target, len(prompt), cfg, max_len) + k + 1
    te, de = Engine(target), (Engine(draft) if draft is not None else None)
    te.start(1, total)
    if de is not None:
        de.start(1, total)
    gen, stats, timing = generator(cfg), SpecStats(), Timing()
    length = DraftLength(k)
    ctx, out = list(prompt), []
    budget = cfg.max_new_tokens
    t0 = time.perf_counter()
    # the whole prompt and the first token exactly as plain decoding does them (same steps, same numbers)
    logits = te.feed(torch.tensor([ctx]))[0, -1]
    if de is not None:
        de.feed(torch.tensor([ctx]))
    x = int(logits.argmax()) if cfg.greedy else int(draw(probs(logits, cfg), gen))
    stop = x == eos
    if not stop:
        out.append(x)
        ctx.append(x)
        stop = (on_token is not None and on_token(x)) or len(out) >= budget
    first = len(out)  # the decode clock counts only the tokens after the first, as the plain path does
    timing.ttft_s, t0 = time.perf_counter() - t0, time.perf_counter()
    while not stop and len(out) < budget:
        n_cached = len(ctx) - 1
        room = min(length.allowed() if adaptive else k, budget - len(out) - 1)
        if de is not None and room > 0:
            drafted, qs = [], []
            x = ctx[-1]
            for _ in range(room):
                qi = probs(de.feed(torch.tensor([[x]]))[0, -1], cfg)
                x = int(draw(qi, gen))
                drafted.append(x)
                qs.append(qi)
            q = torch.stack(qs) if qs else torch.zeros(0, target.config.vocab_size)
        else:
            drafted = lookup(ctx, room, max_ngram, min_ngram) if room > 0 else []
            q = torch.nn.functional.one_hot(torch.tensor(drafted, dtype=torch.long), target.config.vocab_size).float()
        logits = te.feed(torch.tensor([[ctx[-1]] + drafted]), all_logits=True)[0]
        p = probs(logits, cfg)
        n, nxt = accept(p, q, torch.tensor(drafted, dtype=torch.long), gen)
        stats.proposed += len(drafted)
        stats.accepted += n
        length.update(len(drafted), n)
        stats.target_steps += 1
        te.rollback(n_cached + 1 + n)
        if de is not None:
            de.rollback(min(de.cache.length, n_cached + 1 + n))
        new = drafted[:n] + [nxt]
        stop = False
        for t in new:
            if t == eos:
                stop = True
                break
            out.append(t)
            ctx.append(t)
            if (on_token is not None and on_token(t)) or len(out) >= budget:
                stop = True
                break
        if stop:
            break
        if de is not None and de.cache.length < len(ctx) - 1:  # the draft catches up to ctx[:-1]
            de.feed(torch.tensor([ctx[de.cache.length : len(ctx) - 1]]))
    timing.new_tokens = len(out) - first
    timing.decode_s = time.perf_counter() - t0 if timing.new_tokens else 0.0
    return out, timing, stats


def speculative_generate(
    target: Any,
    tok: Any,
    prompt: str,
    cfg: SamplingConfig,
    *,
    draft: Any = None,
    chat: bool = False,
    k: int = 4,
    max_ngram: int = 3,
    min_ngram: int = 1,
    adaptive: bool = False,
    max_len: int | None = None,
    on_text: Callable[[int, str], None] | None = None,
) -> tuple[Generation, Timing, SpecStats]:
    """Text in, text out (stop strings and streaming as in ``generate``)."""
    from efflm.inference.generate import TextStream, encode

    ids, _ = encode(tok, [prompt], chat)
    res = Generation(prompt_tokens=ids.shape[1])
    stream = TextStream(res, tok, cfg.stop, on_text)

    tokens, timing, stats = speculative_ids(
        target,
        ids[0].tolist(),
        cfg,
        draft=draft,
        k=k,
        max_ngram=max_ngram,
        min_ngram=min_ngram,
        adaptive=adaptive,
        eos=tok.eos_token_id,
        max_len=max_len,
        on_token=stream.push,
    )
    stream.close()
    if res.finish != "stop" and len(tokens) < cfg.max_new_tokens:
        res.finish = "eos"
    return res, timing, stats


@dataclass(frozen=True)
class SpeculativeConfig(MethodConfig):
    """Decode speculatively: ``draft`` is ``prompt_lookup`` (n-grams of the context, ``min_ngram`` to
    ``ngram`` tokens long) or ``layers`` (the model's own first ``draft_layers`` layers); up to ``k``
    tokens drafted per step, the length following acceptance when ``adaptive``."""

    method = "speculative"
    draft: str = opt(
        "prompt_lookup",
        "the drafter: prompt_lookup (the tokens that followed the latest earlier match of the context's last "
        "n-gram) or layers (the model's own first draft_layers layers)",
    )
    k: int = opt(4, "most tokens drafted per step (≥ 1)")
    ngram: int = opt(3, "prompt_lookup: longest n-gram matched, in tokens (≥ min_ngram)")
    draft_layers: int = opt(8, "layers: how many of the model's first layers draft (≥ 1)")
    min_ngram: int = opt(2, "prompt_lookup: shortest n-gram match that is drafted from (≥ 1)")
    adaptive: bool = opt(
        True, "the draft length follows acceptance (two more after a full accept, one fewer after a rejection)"
    )

    def __post_init__(self) -> None:
        if self.draft not in ("prompt_lookup", "layers"):
            raise ConfigError(f"speculative: draft must be prompt_lookup or layers, got {self.draft!r}")
        for name in ("k", "ngram", "draft_layers", "min_ngram"):
            if getattr(self, name) < 1:
                raise ConfigError(f"speculative: {name} must be ≥ 1, got {getattr(self, name)}")
        if self.min_ngram > self.ngram:
            raise ConfigError(f"speculative: min_ngram {self.min_ngram} exceeds ngram {self.ngram}")


def _check(hf_config: Any, config: SpeculativeConfig) -> None:
    if config.draft == "layers" and config.draft_layers >= hf_config.num_hidden_layers:
        raise ConfigError(
            f"speculative: draft_layers {config.draft_layers} must be below the model's "
            f"{hf_config.num_hidden_layers} layers"
        )


@register(
    SpeculativeConfig,
    family="inference",
    title="Speculative decoding (draft + exact acceptance)",
    arxiv="2211.17192",
    needs_calibration=False,
    paper="fast-inference-transformers-speculative-decoding",
    check=_check,
)
def apply(model: Any, config: SpeculativeConfig, calib: Any = None) -> Any:
    setattr(model.config, SPEC_ATTR, config.to_dict())
    return model


def drafter_for(model: Any) -> "tuple[Any, SpeculativeConfig] | None":
    """(draft model or None for prompt lookup, its config) if the model decodes speculatively; a
    config saved before a field existed gets that field's default."""
    spec = getattr(model.config, SPEC_ATTR, None)
    if not spec:
        return None
    cfg = config_from_dict(spec)
    return (first_layers(model, cfg.draft_layers) if cfg.draft == "layers" else None), cfg
