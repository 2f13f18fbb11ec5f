"""Automatic prefix caching: shared prefixes reuse KV, outputs equal the cache-off outputs (fp32 and
int8 KV), hits are counted in /metrics, the memory budget holds."""

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from efflm.inference.cache import make_cache
from efflm.inference.generate import SamplingConfig
from efflm.methods import config_from_dict, get
from efflm.serve.batcher import Batcher, Request
from efflm.serve.prefix_cache import PrefixCache
from tests.serve.conftest import Running
from tests.serve.test_batcher import _serve_all


def serve_scored(b, ids, n):
    """One request's tokens and the model's log-probability of each (as the server reports them)."""
    import threading

    done, lps = threading.Event(), []

    def emit(kind, value):
        if kind != "error":
            lps.extend(lp for _, lp, _ in value[-1])
        if kind != "text":
            done.set()

    req = Request(ids, SamplingConfig(max_new_tokens=n), emit, logprobs=0)
    b.submit(req)
    assert done.wait(60)
    return req.gen.tokens, torch.tensor(lps)


def shared_jobs(prefix_len=150, n=5):
    g = torch.Generator().manual_seed(1)
    system = torch.randint(3, 259, (prefix_len,), generator=g).tolist()
    return [(system + torch.randint(3, 259, (5 + 3 * i,), generator=g).tolist(), 12) for i in range(n)]


@pytest.mark.parametrize("kv", [None, "kv_int8"])
def test_outputs_with_the_cache_equal_outputs_without(tiny, kv):
    model, tok = tiny
    if kv:
        model = get(kv).apply(model, config_from_dict({"method": kv}))
    jobs = shared_jobs()
    results = {}
    for mb in (0, 64):
        b = Batcher(model, tok, max_batch=2, max_len=256, chunk=64, prefix_cache_mb=mb)
        b.start()
        try:
            results[mb] = [serve_scored(b, *job) for job in jobs]  # one after another: later ones hit
        finally:
            b.shutdown(1)
        if mb:
            assert b.prefix.hit_tokens >= (len(jobs) - 1) * 128  # 150 shared tokens: four blocks of 32 each
    for (tokens, lps), (want_tokens, want_lps) in zip(results[64], results[0]):
        assert tokens == want_tokens
        torch.testing.assert_close(lps, want_lps, atol=1e-5, rtol=0)  # the same distributions, not just picks


def test_restore_keeps_whole_blocks_and_never_the_last_token(tiny):
    model, _ = tiny
    from efflm.inference.engine import Engine

    ids = list(range(3, 3 + 64))  # exactly two blocks
    pc = PrefixCache(1 << 20, block=32)
    e = Engine(model)
    e.cache = make_cache(model, 1, 64, torch.float32)
    e.pos = torch.zeros(1, dtype=torch.long)
    e.step(torch.tensor([ids]))
    pc.insert(ids, e.cache)
    assert len(pc.blocks) == 2
    fresh = make_cache(model, 1, 64, torch.float32)
    assert pc.restore(ids, fresh) == 32  # the second block holds the last token: prefilled again
    assert torch.equal(fresh.k[:, 0, :, :32], e.cache.k[:, 0, :, :32]) and fresh.length == 32
    assert pc.restore([9, *ids[1:], 5], make_cache(model, 1, 66, torch.float32)) == 0  # another first token


def test_the_budget_evicts_least_recently_used_blocks(tiny):
    model, tok = tiny
    b = Batcher(model, tok, max_batch=2, max_len=256, chunk=64, prefix_cache_mb=0.05)
    b.start()
    try:
        for job in shared_jobs(prefix_len=200, n=3):
            _serve_all(b, [job])
    finally:
        b.shutdown(1)
    assert 0 < b.prefix.used <= b.prefix.budget and b.prefix.blocks


def _metric(server, name):
    text = httpx.get(server.url + "/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name.startswith(name))


def test_the_server_counts_hits_and_answers_the_same():
    on, off = Running(max_batch=2, prefix_cache_mb=32), Running(max_batch=2)
    try:
        system = "You are a careful assistant who answers in one short sentence. " * 3
        prompts = [system + q for q in ("What is two plus two?", "Name a colour.", "Where is Paris?")]
        for p in prompts:
            a = on.client().completions.create(model="tiny-llama", prompt=p, max_tokens=10, temperature=0)
            b = off.client().completions.create(model="tiny-llama", prompt=p, max_tokens=10, temperature=0)
            assert a.choices[0].text == b.choices[0].text
        assert _metric(on, "efflm:prefix_cache_hits") >= 2 * 128
        assert _metric(on, "efflm:prefix_cache_queries") >= sum(len(on.tok(p)["input_ids"]) for p in prompts)
        assert _metric(off, "efflm:prefix_cache_hits") == 0  # no cache, no counter
    finally:
        on.stop()
        off.stop()
