"""The batch's decode step, and speculative decoding inside it: prompt-lookup drafts per row,
verified for every row in one ``[n, 1 + k]`` step (a plain step is one with no drafts).

Each row drafts up to ``k`` tokens from its own context (``inference.speculative.lookup``: the
tokens after the latest earlier match of its last n-gram; the length adapts to that row's
acceptance, ``DraftLength``). Rows with shorter drafts are padded with tokens marked invalid,
which take no position and are never attended to. From the step's logits each row then emits
tokens one position at a time exactly as a plain step would (``sequence.emit_token``: bias,
penalties, grammar mask, then argmax or a draw from its own generator) and stops at the first
emitted token that differs from its draft — so a row's output is the one plain decoding gives,
greedy or sampled with a seed (each token is one draw from the same distribution, in the same
order: Leviathan et al.'s acceptance rule for a one-hot draft). The rejected drafts' cache
slots are marked invalid and the row's position moves back; the shared cursor stays where the
step left it (the next compaction reclaims the slots). Every row computes T tokens, its pads
too, so T is chosen from the measured step costs and the acceptance so far
(``serve.costs.StepCosts.verify_length``): a compute-bound batch drafts less or not at all.
"""

from __future__ import annotations

from typing import Any

import torch

from efflm.inference.speculative import DraftLength, lookup
from efflm.serve.sequence import emit_token, finish


def _draft(req: Any, cfg: Any, room: int) -> list[int]:
    if req._drafts is None:
        req._drafts = DraftLength(cfg.k)
    k = min(req._drafts.allowed() if cfg.adaptive else cfg.k, room)
    return lookup(req.ids + req.gen.tokens, k, cfg.ngram, cfg.min_ngram) if k > 0 else []


def drafts(b: Any) -> list[list[int]]:
    """Each running row's draft for this step, cut to the length that pays (all empty: a plain step)."""
    cfg = b.lookup
    if b.cursor + 1 + cfg.k > b.cache.size:
        b._compact()
    room = b.cache.size - b.cursor - 1  # drafted tokens the cache still has slots for
    out = []
    for r in b.running:  # never past the row's token budget: a plain step would stop there too
        left = min(r.sampling.max_new_tokens - len(r.gen.tokens), b.max_len - len(r.ids) - len(r.gen.tokens)) - 1
        out.append(_draft(r, cfg, min(room, left)))
    if not any(out):
        return out
    # each row's acceptance so far, from a prior of 2 in 3 (a new request starts hopeful)
    T = b.costs.verify_length(out, [(r._drafts.accepted + 2) / (r._drafts.proposed + 3) for r in b.running])
    return [d[: T - 1] for d in out]  # T = 1: the step would cost more than the drafts are expected to add


@torch.inference_mode()
def verify(b: Any, drafts: list[list[int]]) -> int:
    """One decode step over ``b``'s running rows (a ``Batcher``), each fed its last token and its
    draft (none: a plain step); the tokens per row it computed."""
    n, T = len(b.running), 1 + max(len(d) for d in drafts)
    if b.cursor + T > b.cache.size:
        b._compact()
    ids = torch.tensor([[r._last, *d, *[r._last] * (T - 1 - len(d))] for r, d in zip(b.running, drafts)])
    valid = torch.tensor([[True] * (1 + len(d)) + [False] * (T - 1 - len(d)) for d in drafts]) if T > 1 else None
    e, view = b.engine, b.cache.rows(n)
    view.length = start = b.cursor
    e.cache, e.pos = view, b.pos[:n].clone()
    b._route(b.running)
    logits = e.step(ids, valid, all_logits=T > 1)
    b.pos[:n] = e.pos
    b.cursor = view.length
    for i in reversed(range(n)):
        req, d = b.running[i], drafts[i]
        done, accepted = req.cancelled, 0
        for j in range(len(d) + 1):
            if done or emit_token(req, logits[i, j], b.eos, b.max_len):
                done = True
                break
            if j == len(d) or req._last != d[j]:
                break
            accepted += 1
        if d:  # its counts feed the acceptance estimate; its length matters only when adaptive
            b.drafted, b.accepted = b.drafted + len(d), b.accepted + accepted
            req._drafts.update(len(d), accepted)
        if done:
            finish(req)
            b._free(i)
        elif accepted < len(d):  # the rejected drafts' keys and values are not this row's context
            b.cache.valid[i, :, start + 1 + accepted : start + 1 + len(d)] = False
            b.pos[i] -= len(d) - accepted
    return T
