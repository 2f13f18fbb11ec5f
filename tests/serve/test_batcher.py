"""Continuous batching without HTTP: joins, leaves, compaction, KV methods."""

import threading

import pytest
import torch

from efflm.inference.generate import SamplingConfig, generate_ids
from efflm.methods import config_from_dict, get
from efflm.serve.batcher import Batcher, QueueFull, Request


def _serve_all(b, jobs):
    """Submit every (ids, n) at once; return each request's tokens and finish reason."""
    done = [threading.Event() for _ in jobs]
    reqs = []
    for i, (ids, n) in enumerate(jobs):

        def emit(kind, value, i=i):
            if kind != "text":
                done[i].set()

        reqs.append(Request(ids, SamplingConfig(max_new_tokens=n), emit))
    for r in reqs:
        b.submit(r)
    assert all(d.wait(60) for d in done)
    return [(r.gen.tokens, r.gen.finish) for r in reqs]


def _solo(model, tok, ids, n):
    out, _ = generate_ids(model, tok, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.bool),
                          SamplingConfig(max_new_tokens=n))  # fmt: skip
    return out[0].tokens, out[0].finish


def _jobs():
    g = torch.Generator().manual_seed(0)
    lengths = [3, 12, 7, 20, 5, 9, 15]
    news = [34, 20, 30, 18, 33, 28, 22]
    return [(torch.randint(3, 259, (p,), generator=g).tolist(), n) for p, n in zip(lengths, news)]


@pytest.mark.parametrize("kv", [None, "kv_int8"])
def test_joins_leaves_and_compaction_equal_solo(tiny, kv):
    model, tok = tiny
    if kv:
        model = get(kv).apply(model, config_from_dict({"method": kv}))
    b = Batcher(model, tok, max_batch=3, max_queue=16, max_len=40, chunk=4)  # 7 requests over 3 rows
    compactions = []
    original = b._compact
    b._compact = lambda: (compactions.append(b.cursor), original())
    b.start()
    try:
        assert b.batched
        got = _serve_all(b, _jobs())
    finally:
        b.shutdown(1)
    assert compactions, "the cursor never reached the end of the 40-slot cache"
    assert got == [_solo(model, tok, ids, n) for ids, n in _jobs()]
    assert b.cache.valid.sum() == 0


def test_evicting_kv_methods_are_served_one_at_a_time(tiny):
    model, tok = tiny
    model = get("streaming_llm").apply(model, config_from_dict({"method": "streaming_llm", "sinks": 2, "budget": 16}))
    b = Batcher(model, tok, max_batch=3, max_len=64)
    b.start()
    try:
        assert not b.batched
        jobs = _jobs()[:3]
        got = _serve_all(b, jobs)
    finally:
        b.shutdown(1)
    assert got == [_solo(model, tok, ids, n) for ids, n in jobs]


def test_a_layer_draft_recipe_is_served_speculatively_with_plain_greedy_tokens(tiny, monkeypatch):
    import efflm.serve.solo as batcher_module

    model, tok = tiny
    plain = [_solo(model, tok, ids, n) for ids, n in _jobs()[:3]]
    spec = {"method": "speculative", "k": 4, "draft": "layers", "draft_layers": 1}
    model = get("speculative").apply(model, config_from_dict(spec))
    calls, real = [], batcher_module.speculative_ids
    monkeypatch.setattr(batcher_module, "speculative_ids", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    b = Batcher(model, tok, max_batch=3, max_len=64)
    b.start()
    try:
        assert not b.batched and b.speculative is not None
        got = _serve_all(b, _jobs()[:3])
    finally:
        b.shutdown(1)
    assert len(calls) == 3 and got == plain


def test_queue_bound_and_drain():
    from efflm.io.load import load

    model, tok = load("tiny-llama")
    b = Batcher(model, tok, max_queue=2)
    for _ in range(2):
        b.submit(Request([5, 6], SamplingConfig(max_new_tokens=1), lambda k, v: None))
    with pytest.raises(QueueFull):
        b.submit(Request([5, 6], SamplingConfig(max_new_tokens=1), lambda k, v: None))
    b.start()
    b.shutdown(5)
    assert b.idle()


def test_prompts_prefill_in_short_chunks_while_rows_decode(tiny):
    """Stall-free batching: a decoding row waits for at most ``decode_chunk`` prompt tokens a step;
    with nothing decoding a prompt goes ``chunk`` tokens at a time. Outputs stay the solo ones."""
    model, tok = tiny
    b = Batcher(model, tok, max_batch=3, max_queue=16, max_len=80, chunk=32, decode_chunk=5)
    steps = []
    b.on_step = steps.append
    b.start()
    try:
        g = torch.Generator().manual_seed(3)
        jobs = [(torch.randint(3, 259, (p,), generator=g).tolist(), 12) for p in (40, 23, 31)]
        got = _serve_all(b, jobs)
    finally:
        b.shutdown(0.0)
    assert got == [_solo(model, tok, ids, n) for ids, n in jobs]
    busy = [s["prefill_tokens"] for s in steps if s["decoding_before"] and s["prefill_tokens"]]
    idle = [s["prefill_tokens"] for s in steps if not s["decoding_before"] and s["prefill_tokens"]]
    assert busy and max(busy) <= 5
    assert max(idle) == 32


def _serve_sampled(b, jobs, temperature):
    done = [threading.Event() for _ in jobs]
    reqs = []
    for i, (ids, n) in enumerate(jobs):
        cfg = SamplingConfig(max_new_tokens=n, temperature=temperature, seed=10 + i)
        reqs.append(Request(ids, cfg, lambda kind, v, i=i: kind != "text" and done[i].set(), logprobs=0))
    for r in reqs:
        b.submit(r)
    assert all(d.wait(60) for d in done)
    return [(r.gen.tokens, r.gen.finish, [round(lp, 3) for _, lp, _ in r._lps]) for r in reqs]


@pytest.mark.parametrize("temperature", [0.0, 0.1])
def test_prompt_lookup_drafts_are_verified_inside_the_batch_with_plain_outputs(tiny, temperature):
    """A prompt-lookup recipe is batched: every row's draft is checked in one step; outputs (greedy,
    or sampled with a seed) and log-probabilities equal a plain batcher's."""
    model, tok = tiny
    g = torch.Generator().manual_seed(5)
    motif = torch.randint(3, 259, (6,), generator=g).tolist()
    jobs = [(motif * 3 + torch.randint(3, 259, (p,), generator=g).tolist(), 24) for p in (2, 5, 9, 4)]
    results = {}
    for spec in (False, True):
        m = (
            get("speculative").apply(model, config_from_dict({"method": "speculative", "k": 4, "min_ngram": 1}))
            if spec
            else model
        )
        b = Batcher(m, tok, max_batch=3, max_queue=16, max_len=64)
        b.start()
        try:
            results[spec] = _serve_sampled(b, jobs, temperature)
        finally:
            b.shutdown(1)
        if spec:
            assert b.batched and b.lookup is not None and b.drafted > 0 and b.accepted > 0, (b.drafted, b.accepted)
    assert results[True] == results[False]


def test_the_default_prefill_chunk_takes_about_one_decode_step(tiny):
    model, tok = tiny
    b = Batcher(model, tok, max_batch=2, max_len=64, chunk=100)
    assert b.piece() == 100  # nothing decodes: a whole chunk
    b.running = [object()]
    assert b.piece() == 16  # no timings yet
    b.costs.tok_s, b.costs.step_s = 0.002, 0.030
    assert b.piece() == 15
    b.costs.fixed_s = 0.010  # the chunk's own fixed cost is paid once: 20 ms of tokens
    assert b.piece() == 10
    b.costs.tok_s = 0.1
    assert b.piece() == 8  # never below 8 tokens
    b.costs.tok_s = 1e-6
    assert b.piece() == 100  # never above --chunk


def test_speculation_is_sized_by_the_measured_step_costs():
    from efflm.serve.costs import StepCosts

    c = StepCosts()
    drafts = [[1, 2, 3, 4], [], [5, 6]]
    assert c.verify_length(drafts, [0.8] * 3) == 5  # nothing measured yet: every draft, to learn
    c.prefilled(16, 16 * 0.002)
    c.decoded(3, 0.020 + 3 * 0.002)
    assert abs(c.fixed_s - 0.020) < 1e-9
    assert c.verify_length(drafts, [0.8] * 3) == 3  # past 2 drafts, one row's pads cost more than the other adds
    c.fixed_s = 0.1
    assert c.verify_length(drafts, [0.8] * 3) == 5  # weight-bound (large fixed cost): verify them all
    assert c.verify_length(drafts, [0.0] * 3) == 1  # drafts never accepted: plain steps
    c.fixed_s = 0.0  # compute-bound: a pad costs what a token does, a draft adds at most its acceptance
    assert c.verify_length(drafts, [0.8] * 3) == 1
