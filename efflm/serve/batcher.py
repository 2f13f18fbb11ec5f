"""Continuous batching (Orca, OSDI'22: iteration-level scheduling) on efflm's engine.

One thread owns the model. Every iteration it
1. drops cancelled requests (a disconnected client's row is free at this step);
2. moves waiting requests into prefill while rows are free; a prompt is prefilled in chunks
   into a one-sequence cache of its own, one chunk per iteration: ``chunk`` tokens while no
   sequence decodes, ``decode_chunk`` while some do (Sarathi-Serve's stall-free batching: a
   decode step waits for one short chunk, not a whole prompt). By default (None) that is as
   many tokens as take about one decode step, from running averages of both timings, so a
   decoding sequence's gap stays near two steps whatever the model;
3. when a prompt is done: samples its first token and copies its cache into the next free row
   of the shared batch cache, its slots ending at the shared cursor;
4. runs one decode step, ``[n, 1]``, over the first n rows (``KVCache.rows``): every running
   sequence advances one token with its own sampling parameters, seed and stop strings.

Rows stay packed: a finished sequence's row is refilled by the last running one. Every
sequence writes its next token at the shared cursor; when the cursor reaches the end of the
cache, each row's valid slots are moved to the front. Keys are stored rotated at their own
positions, so attention depends only on which slots are valid and their order.

Per row, before sampling: the request's ``logit_bias`` and presence/frequency penalties
(``inference.logits_process``) and its grammar's mask (``inference.grammar``, llguidance), so
constrained and free sequences share a step; log-probabilities come from the raw logits. ``n``
completions of one prompt share its prefill: its cache is copied into n rows, each sampling on.

Named LoRA adapters (``serve.adapters``) ride in the batch: each step tells the model's routing
which adapter each row uses. Loading and unloading run on this thread between steps (``call``).

A recipe with a prompt-lookup ``speculative`` step drafts per row and verifies every row's draft
in one step (``serve.spec_batch``). Models whose KV policy evicts or scores tokens, or that carry
prompt adapters, are served one request at a time through ``generate_ids`` (their per-sequence
state cannot share rows); a ``speculative`` step drafting with the model's own first layers is
served one request at a time through speculative decoding.
Those paths serve plain sampling only (``Batcher.solo_refuses`` names what they cannot).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from efflm.core.errors import EfflmError
from efflm.inference.cache import KVCache, make_cache
from efflm.inference.engine import Engine
from efflm.inference.generate import TextStream, generator
from efflm.inference.grammar import Constraint
from efflm.inference.speculative import drafter_for
from efflm.serve.costs import StepCosts
from efflm.serve.prefix_cache import PrefixCache
from efflm.serve.sequence import Request, emit_token, finish, prompt_logprobs
from efflm.serve.solo import refuses, serve_one
from efflm.serve.spec_batch import drafts, verify


class QueueFull(EfflmError):
    """The waiting queue is at ``max_queue``."""


class Draining(EfflmError):
    """The server is shutting down and admits nothing new."""


class Batcher:
    """The scheduler thread; ``submit`` from any thread. ``stats`` callbacks feed the metrics."""

    def __init__(
        self,
        model: Any,
        tok: Any,
        max_batch: int = 8,
        max_queue: int = 64,
        max_len: int = 2048,
        chunk: int = 128,
        decode_chunk: int | None = None,
        on_step: Callable[[dict], None] | None = None,
        prefix_cache_mb: float = 0.0,
        adapters: Any = None,
    ):
        self.model, self.tok = model, tok
        self.max_batch, self.max_queue, self.max_len, self.chunk = max_batch, max_queue, max_len, chunk
        self.decode_chunk = None if decode_chunk is None else min(decode_chunk, chunk)
        self.costs = StepCosts()  # measured step costs: the prefill chunk and speculation are sized by them
        self.on_step = on_step or (lambda info: None)
        self.adapters = adapters  # serve.adapters.Adapters: wraps the model's Linears before the engine reads them
        self.engine = Engine(model)
        self.eos = {tok.eos_token_id} if tok.eos_token_id is not None else set()
        self.vocab = model.config.vocab_size
        probe = make_cache(model, 1, 1, torch.float32)
        self.speculative = drafter_for(model)  # (draft or None, SpeculativeConfig) from the recipe
        # prompt-lookup drafts are verified inside the batch (serve.spec_batch); a draft model decodes solo
        self.lookup = self.speculative[1] if self.speculative is not None and self.speculative[0] is None else None
        if self.lookup is not None:
            self.speculative = None
        self.drafted = self.accepted = 0  # draft tokens proposed and accepted (in-batch speculation)
        self.batched = (
            self.speculative is None
            and not (probe.evicts or probe.needs_weights or probe.rerotate)
            and not (self.engine.prompt.n_virtual or self.engine.prompt.gated)
        )
        if adapters is not None and not self.batched:
            raise EfflmError("named LoRA adapters ride in the batch; this model decodes one request at a time "
                             "(speculative decoding, a KV-cache policy or a prompt adapter)")  # fmt: skip
        # prompts' KV kept for reuse by later prompts with the same prefix (batched models only)
        self.prefix = PrefixCache(int(prefix_cache_mb * 2**20)) if prefix_cache_mb > 0 and self.batched else None
        self.waiting: deque[Request] = deque()
        self.prefill: Request | None = None
        self.running: list[Request] = []
        self.cache: KVCache | None = None
        self.pos = torch.zeros(max_batch, dtype=torch.long)
        self.cursor = 0
        self.draining = False
        self._cv = threading.Condition()
        self._controls: deque = deque()  # (fn, done event, [result]) run on this thread between steps
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="efflm-batcher", daemon=True)

    # -- from the server -------------------------------------------------------------------
    def _ensure_cache(self) -> None:
        if self.batched and self.cache is None:
            self.cache = make_cache(self.model, self.max_batch, self.max_len, torch.float32)

    def start(self) -> None:
        self._ensure_cache()
        self._thread.start()

    def submit(self, req: Request) -> None:
        with self._cv:
            if self.draining:
                raise Draining("the server is shutting down")
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"the waiting queue is full ({self.max_queue} requests)")
            if req.n > self.max_batch:
                raise QueueFull(f"n = {req.n} needs more rows than the batch has ({self.max_batch})")
            self._arm(req)
            self.waiting.append(req)
            self._cv.notify()

    def _arm(self, req: Request) -> None:
        """Give ``req`` its text stream, random generator and grammar matcher."""
        req._stream = TextStream(
            req.gen, self.tok, req.sampling.stop, lambda i, d: req.emit("text", (req.index, d, req.taken()))
        )
        req._rng = None if req.sampling.greedy else generator(req.sampling)
        req.gen.prompt_tokens = len(req.ids)
        if req.grammar is not None:
            req._constraint = Constraint(self.tok, self.vocab, req.grammar)

    def _child(self, req: Request, i: int) -> Request:
        seed = None if req.sampling.seed is None else (req.sampling.seed + i) % 2**63
        sampling = replace(req.sampling, seed=seed)
        child = Request(req.ids, sampling, req.emit, 1, req.logprobs, req.adjust, req.grammar, req.echo, i, req.adapter)
        child.t_submit = req.t_submit
        self._arm(child)
        return child

    def solo_refuses(self, req: Request) -> str | None:
        """What a one-at-a-time model cannot serve of ``req`` (None: all of it)."""
        return None if self.batched else refuses(req)

    def cancel(self, req: Request) -> None:
        with self._cv:
            for r in (req, *req._children):
                r.cancelled = True
            self._cv.notify()

    def call(self, fn: Callable[[], Any], timeout_s: float = 30.0) -> Any:
        """Run ``fn()`` on the scheduler thread between two steps; return its result or raise its error."""
        box: list = []
        done = threading.Event()
        with self._cv:
            self._controls.append((fn, done, box))
            self._cv.notify()
        if not done.wait(timeout_s):
            raise EfflmError("the scheduler did not answer in time")
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def _run_controls(self) -> None:
        while self._controls:
            fn, done, box = self._controls.popleft()
            try:
                box.append(fn())
            except Exception as e:
                box.append(e)
            done.set()

    def in_use(self, adapter: str) -> int:
        """Requests waiting or running with ``adapter`` (call on the scheduler thread)."""
        live = [*self.waiting, *self.running, *([self.prefill] if self.prefill else [])]
        return sum(r.adapter == adapter for r in live)

    def counts(self) -> tuple[int, int]:
        """(running incl. prefill, waiting)."""
        return len(self.running) + (self.prefill is not None), len(self.waiting)

    def slots_in_use(self) -> int:
        """Batch-cache slots holding a token of a running sequence."""
        n = len(self.running)
        return int(self.cache.valid[:n, 0].sum()) if self.cache is not None and n else 0

    def idle(self) -> bool:
        return not (self.waiting or self.running or self.prefill)

    def shutdown(self, deadline_s: float) -> None:
        """Stop admitting; let in-flight requests finish until the deadline, then cancel them."""
        with self._cv:
            self.draining = True
        end = time.monotonic() + deadline_s
        while not self.idle() and time.monotonic() < end:
            time.sleep(0.02)
        with self._cv:
            for r in [*self.waiting, *self.running, *([self.prefill] if self.prefill else [])]:
                r.cancelled = True
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=5)

    # -- the thread ------------------------------------------------------------------------
    def _loop(self, done: Callable[[], bool] | None = None) -> None:
        while True:
            with self._cv:
                while not self._stop and self.idle() and not self._controls and not (done and done()):
                    self._cv.wait(0.1)
                if self._stop or (done and done() and self.idle()):
                    return
            self._run_controls()
            if self.idle():
                continue
            try:
                self._iteration() if self.batched else serve_one(self)
            except Exception as e:  # a failed step fails its requests, never the server
                for r in [*self.running, *([self.prefill] if self.prefill else [])]:
                    r.emit("error", f"{type(e).__name__}: {e}")
                self.running, self.prefill = [], None
                self.cursor = 0
                if self.cache is not None:
                    self.cache.valid.zero_()

    def run_here(self, done: Callable[[], bool]) -> None:
        """Run the scheduler in the calling thread until ``done()`` and nothing is in flight.

        The CLI runs it on the main thread (the HTTP server in another): OpenMP keeps one
        thread pool per calling thread, and a second pool makes libgomp stop spinning between
        the fused step's many parallel regions — each step then costs about 2.5× as much."""
        self._ensure_cache()
        self._loop(done)

    def _drop_cancelled(self) -> None:
        with self._cv:
            gone = [r for r in self.waiting if r.cancelled]
            for r in gone:
                self.waiting.remove(r)
        if self.prefill is not None and self.prefill.cancelled:
            self.prefill = None
        for i in reversed(range(len(self.running))):
            if self.running[i].cancelled:
                self._free(i)

    def _iteration(self) -> None:
        self._drop_cancelled()
        if self.prefill is None and len(self.running) < self.max_batch:
            with self._cv:  # n completions of one prompt take n rows at once
                if self.waiting and len(self.running) + self.waiting[0].n <= self.max_batch:
                    self.prefill = self.waiting.popleft()
        t0, decoding = time.perf_counter(), len(self.running)
        prefilled = self._prefill_chunk() if self.prefill is not None else 0
        t1 = time.perf_counter()
        self.costs.prefilled(prefilled, t1 - t0)
        if self.running:
            tokens = self._decode()
            self.costs.decoded(tokens, time.perf_counter() - t1)
        self.on_step({"prefill_tokens": prefilled, "prefill_s": t1 - t0, "decode_rows": len(self.running),
                      "decoding_before": decoding, "slots": self.cursor})  # fmt: skip

    def piece(self) -> int:
        """Prompt tokens to prefill this iteration."""
        if not self.running:
            return self.chunk
        return self.decode_chunk or self.costs.chunk_while_decoding(self.chunk)

    @torch.inference_mode()
    def _prefill_chunk(self) -> int:
        req, e = self.prefill, self.engine
        if req._cache is None:
            req._cache = make_cache(self.model, 1, len(req.ids), torch.float32)
            reuse = self.prefix is not None and not (req.echo and req.logprobs is not None)  # echo scores every token
            req._done = self.prefix.restore(req.ids, req._cache, self._salt(req)) if reuse else 0
            req._pos = torch.tensor([req._done], dtype=torch.long)
        piece = req.ids[req._done : req._done + self.piece()]
        e.cache, e.pos = req._cache, req._pos
        self._route([req])
        echo_lps = req.echo and req.logprobs is not None
        out = e.step(torch.tensor([piece]), all_logits=echo_lps)
        if echo_lps:
            prompt_logprobs(req, out[0], req._done)
        logits = out[:, -1]
        req._pos, req._done = e.pos, req._done + len(piece)
        if req._done < len(req.ids):
            return len(piece)
        if self.prefix is not None:
            self.prefix.insert(req.ids, req._cache, self._salt(req))
        self.prefill = None
        req._children = [self._child(req, i) for i in range(1, req.n)]
        cache = req._cache
        for member in (req, *req._children):
            member.prompt_logprobs = req.prompt_logprobs
            if emit_token(member, logits[0], self.eos, self.max_len):
                finish(member)
            else:
                self._splice(member, cache)
        return len(piece)

    def _route(self, rows: list[Request]) -> None:
        if self.adapters is not None:
            self.adapters.routing.rows = [r.adapter for r in rows]

    def _salt(self, req: Request) -> bytes:
        return b"" if self.adapters is None else self.adapters.salt(req.adapter)

    def _splice(self, req: Request, cache: KVCache) -> None:
        """Copy a prefilled prompt (``cache``) into row n of the batch cache, its slots ending at the cursor."""
        n, P = len(self.running), len(req.ids)
        if self.cursor < P:
            self.cursor = P  # the other rows get a gap of invalid slots
        if self.cursor + 1 > self.cache.size:
            self._compact()
            self.cursor = max(self.cursor, P)
        lo = self.cursor - P
        for dst, src in zip(self.cache.tensors(), cache.tensors()):
            dst[:, n, :, lo : self.cursor] = src[:, 0, :, :P]
        self.cache.valid[n] = False
        self.cache.valid[n, :, lo : self.cursor] = True
        self.pos[n] = P
        req._cache = None
        self.running.append(req)

    def _compact(self) -> None:
        """Move each row's valid slots to the front, in order; the cursor becomes the longest row."""
        c = self.cache
        longest = 0
        for r in range(len(self.running)):
            idx = c.valid[r, 0, : self.cursor].nonzero().flatten()
            m = idx.numel()
            for t in c.tensors():
                t[:, r, :, :m] = t[:, r, :, idx]
            c.valid[r] = False
            c.valid[r, :, :m] = True
            longest = max(longest, m)
        self.cursor = longest

    @torch.inference_mode()
    def _decode(self) -> int:
        """One decode step over the running rows, with their drafts where they pay (serve.spec_batch);
        the token-rows it computed."""
        rows = drafts(self) if self.lookup is not None else [[] for _ in self.running]
        return len(self.running) * verify(self, rows)

    def _free(self, i: int) -> None:
        """Remove running row i; the last row moves into its place."""
        last = len(self.running) - 1
        if i != last:
            for t in self.cache.tensors():
                t[:, i, :, : self.cursor] = t[:, last, :, : self.cursor]
            self.cache.valid[i] = self.cache.valid[last]
            self.pos[i] = self.pos[last]
            self.running[i] = self.running[last]
        self.cache.valid[last] = False
        self.running.pop()
        if not self.running:
            self.cursor = 0
