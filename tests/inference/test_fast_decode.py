"""The fused C decode step against the engine's reference path (``Engine(model, fast=False)``)."""

import pytest
import torch

from efflm.inference import fast_decode
from efflm.inference.engine import Engine
from efflm.methods import config_from_dict, get
from efflm.nn import c_kernels

pytestmark = pytest.mark.skipif(not c_kernels.available(), reason="efflm's C kernels do not build here")

BF16 = {"method": "dense", "dtype": "bfloat16"}
FAST = {  # every model the fused step computes; the last word is the kind of Linear it reads
    "dense fp32": [],
    "dense bf16": [BF16],
    "rtn w4 g32 q4": [{"method": "rtn", "bits": 4, "group_size": 32}, BF16],
    "rtn w4 g64 asymmetric q4": [{"method": "rtn", "bits": 4, "group_size": 64, "symmetric": False}, BF16],
    "rtn w8 per-channel q8": [{"method": "rtn", "bits": 8, "group_size": -1}, BF16],
    "w4 + int8 embeddings and head": [
        {"method": "rtn", "bits": 4, "group_size": 32},
        {"method": "int8_embeddings"},
        BF16,
    ],
    "llm_pruner structured": [{"method": "llm_pruner", "ratio": 0.5, "importance": "magnitude"}],
    "int8 KV cache fp32": [{"method": "kv_int8"}],
    "int8 KV cache on w4 q4": [{"method": "rtn", "bits": 4, "group_size": 32}, {"method": "kv_int8"}, BF16],
}
REFERENCE_ONLY = {  # models it declines, and why
    "svd low-rank": ([{"method": "svd", "ratio": 0.3}], "LowRankLinear"),
    "rtn w4 fp32 (unpacked codes)": ([{"method": "rtn", "bits": 4, "group_size": 32}], "nibble layout"),
}
KV_POLICIES = [
    {"method": "h2o", "budget": 24},
    {"method": "streaming_llm", "budget": 24, "sinks": 2},
]


def _apply(model, steps):
    for step in steps:
        cfg = config_from_dict(step)
        model = get(cfg.method).apply(model, cfg, None)
    return model


def greedy(model, ids, new, fast):
    """Prefill ``ids`` then ``new`` greedy one-token steps; (tokens, last-step logits, engine)."""
    e = Engine(model, fast=fast)
    e.start(ids.shape[0], ids.shape[1] + new)
    logits, out = e.feed(ids), []
    for _ in range(new):
        t = logits[:, -1].argmax(-1, keepdim=True)
        out.append(t)
        logits = e.feed(t)
    return torch.cat(out, 1), logits, e


@pytest.mark.parametrize("name", FAST)
def test_fast_step_equals_reference_for_64_greedy_tokens(name, sharp):
    model = _apply(sharp[0], FAST[name])
    ids = torch.randint(3, 259, (2, 8), generator=torch.Generator().manual_seed(4))
    ref, ref_logits, e_ref = greedy(model, ids, 64, fast=False)
    got, got_logits, e = greedy(model, ids, 64, fast=True)
    assert e_ref.fast is None and e.fast is not None, e.fast_off
    assert len(set(ref[0].tolist())) > 4  # a varied continuation, not one repeated token
    assert torch.equal(got, ref)
    # fp32: summation order only; bf16: the same roundings as the reference path (observed 0 on tiny-llama)
    tol = 0.05 if BF16 in FAST[name] else 1e-4
    assert (got_logits - ref_logits).abs().max() <= tol * ref_logits.abs().max()


@pytest.mark.parametrize("name", ["rtn w4 g32 q4", "int8 KV cache on w4 q4"])
def test_fast_step_writes_the_same_cache(name, sharp):
    model = _apply(sharp[0], FAST[name])
    ids = torch.randint(3, 259, (1, 8), generator=torch.Generator().manual_seed(5))
    *_, e_ref = greedy(model, ids, 16, fast=False)
    *_, e = greedy(model, ids, 16, fast=True)
    n = e.cache.length
    assert n == e_ref.cache.length == 8 + 16
    for got, want in zip(e.cache.tensors(), e_ref.cache.tensors()):  # int8: codes and scales
        assert torch.equal(got[..., :n, :], want[..., :n, :])


@pytest.mark.parametrize("name", REFERENCE_ONLY)
def test_models_it_cannot_compute_keep_the_reference_path(name, sharp):
    steps, why = REFERENCE_ONLY[name]
    e = Engine(_apply(sharp[0], steps))
    assert e.fast is None
    assert why.split()[0] in e.fast_off


@pytest.mark.parametrize("policy", KV_POLICIES, ids=lambda p: p["method"])
def test_kv_policies_decode_on_the_reference_path(policy, sharp, monkeypatch):
    model = _apply(sharp[0], [policy])
    ids = torch.randint(3, 259, (1, 8), generator=torch.Generator().manual_seed(6))
    ref, *_ = greedy(model, ids, 32, fast=False)

    def refuse(*a, **k):
        raise AssertionError("a KV policy's cache went through the fused step")

    monkeypatch.setattr(fast_decode.FastDecode, "run", refuse)
    got, _, e = greedy(model, ids, 32, fast=True)
    assert e.fast is not None and not e.fast.accepts(e.cache)
    assert torch.equal(got, ref)


def test_left_padded_rows_decode_as_alone(sharp):
    model = _apply(sharp[0], FAST["rtn w4 g32 q4"])
    a = torch.randint(3, 259, (1, 10), generator=torch.Generator().manual_seed(7))
    b = torch.randint(3, 259, (1, 4), generator=torch.Generator().manual_seed(8))
    ids = torch.cat([a, torch.cat([torch.full((1, 6), 2), b], 1)])
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[1, :6] = False
    e = Engine(model)
    e.start(2, 10 + 24)
    logits, out = e.feed(ids, valid), []
    for _ in range(24):
        t = logits[:, -1].argmax(-1, keepdim=True)
        out.append(t)
        logits = e.feed(t)
    batch = torch.cat(out, 1)
    for row, alone in ((0, a), (1, b)):
        solo, *_ = greedy(model, alone, 24, fast=True)
        assert torch.equal(batch[row], solo[0])


def test_env_switch_turns_it_off(sharp, monkeypatch):
    monkeypatch.setenv("EFFLM_FAST_DECODE", "0")
    e = Engine(sharp[0])
    assert e.fast is None and "EFFLM_FAST_DECODE" in e.fast_off


@pytest.mark.parametrize("name", ["dense bf16", "rtn w4 g32 q4", "rtn w8 per-channel q8"])
def test_a_multi_token_step_computes_each_token_as_one_token_steps_do(name, sharp):
    """What makes speculative verification exact on the fused step: a token's numbers do not
    depend on how many tokens share the step (prefill, k + 1 verified tokens, a batch)."""
    model = _apply(sharp[0], FAST[name])
    ids = torch.randint(3, 259, (1, 12), generator=torch.Generator().manual_seed(9))
    together, alone = Engine(model), Engine(model)
    together.start(1, 12)
    alone.start(1, 12)
    many = together.feed(ids, all_logits=True)
    one = torch.cat([alone.feed(ids[:, t : t + 1]) for t in range(12)], 1)
    assert torch.equal(many, one)


@pytest.mark.parametrize("name", ["dense fp32", "int8 KV cache on w4 q4"])
def test_invalid_slots_between_a_rows_own_do_not_change_its_bits(name, sharp):
    """Slots marked invalid inside a row (rejected speculative drafts, splice gaps) leave the fused
    step's results bit for bit those of the same tokens stored contiguously (attention gathers
    the valid slots before its sums)."""
    model = _apply(sharp[0], FAST[name])
    g = torch.Generator().manual_seed(7)
    prompt, drafts, nxt = (torch.randint(3, 259, (1, n), generator=g) for n in (61, 4, 6))
    e = Engine(model)
    assert e.fast is not None, e.fast_off
    with torch.inference_mode():
        e.start(1, 80)
        e.step(prompt)
        e.step(drafts[:, :1])
        contiguous = e.step(nxt, all_logits=True)
        e.start(1, 80)
        e.step(prompt)
        e.step(drafts, torch.tensor([[True, False, False, False]]))  # three slots left invalid
        holes = e.step(nxt, all_logits=True)
    assert torch.equal(holes, contiguous)
