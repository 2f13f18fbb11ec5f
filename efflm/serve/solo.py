"""One request at a time, for models whose decoding cannot share a batch: a recipe with a
``speculative`` step (speculative decoding), or a KV policy with per-sequence state (H2O,
StreamingLLM) or prompt adapters (``generate_ids``). Plain sampling only: the batcher refuses
``n``, log-probabilities, penalties and grammars for these models before they are queued.
"""

from __future__ import annotations

import time

import torch

from efflm.inference.generate import generate_ids
from efflm.inference.speculative import speculative_ids


def refuses(req) -> str | None:
    """The first feature of ``req`` these paths do not serve (None: plain sampling)."""
    asked = {"n": req.n > 1, "logprobs": req.logprobs is not None, "response_format / guided_*": req.grammar,
             "logit_bias / penalties": req.adjust.active, "echo": req.echo}  # fmt: skip
    return next((k for k, v in asked.items() if v), None)


class _Cancelled(Exception):
    """Raised inside a one-at-a-time generation whose client went away."""


def serve_one(batcher) -> None:
    """One request of ``batcher`` at a time: through speculative decoding when the
    recipe asks for it, else through generate_ids (KV policies with per-sequence state)."""
    batcher._drop_cancelled()
    with batcher._cv:
        if not batcher.waiting:
            return
        req = batcher.prefill = batcher.waiting.popleft()

    def live() -> None:
        if req.cancelled:
            raise _Cancelled
        req.t_first = req.t_first or time.perf_counter()

    def on_text(i: int, delta: str) -> None:
        live()
        req.emit("text", (0, delta, []))

    def on_token(t: int) -> bool:
        live()
        return req._stream.push(t)

    try:
        if batcher.speculative is not None:
            draft, sc = batcher.speculative
            tokens, _, _ = speculative_ids(
                batcher.model,
                req.ids,
                req.sampling,
                draft=draft,
                k=sc.k,
                max_ngram=sc.ngram,
                min_ngram=sc.min_ngram,
                adaptive=sc.adaptive,
                eos=batcher.tok.eos_token_id,
                max_len=batcher.max_len,
                on_token=on_token,
            )
            req._stream.close()
            if req.gen.finish != "stop":
                req.gen.finish = "length" if len(tokens) >= req.sampling.max_new_tokens else "eos"
        else:
            outs, _ = generate_ids(
                batcher.model,
                batcher.tok,
                torch.tensor([req.ids]),
                torch.ones(1, len(req.ids), dtype=torch.bool),
                req.sampling,
                max_len=batcher.max_len,
                engine=batcher.engine,
                on_text=on_text,
            )
            req.gen.tokens, req.gen.text, req.gen.finish = outs[0].tokens, outs[0].text, outs[0].finish
        req.t_last = time.perf_counter()
        req.emit("done", (0, req.gen, []))
    except _Cancelled:
        pass
    finally:
        batcher.prefill = None
