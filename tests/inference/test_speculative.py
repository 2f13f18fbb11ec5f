"""Speculative decoding: greedy identity, the exact sampling distribution, drafters, bad input."""

import math
from collections import Counter

import pytest
import torch

from efflm.core.errors import EfflmError
from efflm.inference.generate import SamplingConfig, generate_ids, probs
from efflm.inference.speculative import (
    DraftLength,
    accept,
    first_layers,
    lookup,
    speculative_generate,
    speculative_ids,
)


def _greedy(model, tok, prompt, n):
    ids = torch.tensor([prompt])
    out, _ = generate_ids(model, None, ids, torch.ones_like(ids, dtype=torch.bool), SamplingConfig(max_new_tokens=n))
    return out[0].tokens


@pytest.fixture
def prompt():
    half = torch.randint(3, 60, (24,), generator=torch.Generator().manual_seed(1)).tolist()
    return half + half  # repeats: prompt lookup finds matches


@pytest.mark.parametrize("drafter", ["lookup", "first-layer", "other-model", "itself"])
def test_greedy_output_is_identical_to_the_target(sharp, prompt, drafter):
    from efflm.io.load import load

    model, tok = sharp
    other, _ = load("tiny-llama")
    draft = {"lookup": None, "first-layer": first_layers(model, 1), "other-model": other, "itself": model}[drafter]
    ref = _greedy(model, tok, prompt, 40)
    got, timing, stats = speculative_ids(model, prompt, SamplingConfig(max_new_tokens=40), draft=draft, k=4)
    assert got == ref
    assert stats.proposed > 0 and stats.target_steps < 40 + 1
    if drafter == "itself":
        assert stats.acceptance == 1.0 and stats.target_steps == math.ceil(40 / 5)


def _exact_joint(model, prompt, cfg):
    """P(x1, x2) of plain sampling, by enumeration over the top-k support."""
    with torch.no_grad():
        p1 = probs(model(torch.tensor([prompt])).logits[0, -1], cfg)
        joint = {}
        for a in p1.nonzero().flatten().tolist():
            p2 = probs(model(torch.tensor([prompt + [a]])).logits[0, -1], cfg)
            for b in p2.nonzero().flatten().tolist():
                joint[(a, b)] = float(p1[a] * p2[b])
    return joint


def _chi2_ok(counts, joint, n):
    stat = sum((counts.get(c, 0) - n * p) ** 2 / (n * p) for c, p in joint.items())
    dof = len(joint) - 1
    crit = dof * (1 - 2 / (9 * dof) + 3.719 * math.sqrt(2 / (9 * dof))) ** 3  # Wilson–Hilferty, p = 1e-4
    return stat < crit and sum(counts.values()) == sum(counts.get(c, 0) for c in joint)


def test_sampling_distribution_equals_the_targets(sharp):
    from efflm.io.load import load

    model, _ = sharp
    draft, _ = load(
        "tiny-llama",
    )  # a poor draft: most of the work is the residual rule
    cfg = SamplingConfig(max_new_tokens=2, temperature=1.0, top_k=4, seed=0)
    prompt = [5, 17, 99, 42]
    joint = _exact_joint(model, prompt, cfg)
    gen = torch.Generator().manual_seed(0)
    n = 1200
    counts = Counter()
    for i in range(n):
        c = SamplingConfig(max_new_tokens=2, temperature=1.0, top_k=4, seed=i)
        got, _, _ = speculative_ids(model, prompt, c, draft=draft, k=2)
        counts[tuple(got)] += 1
    assert _chi2_ok(counts, joint, n)
    # the same test rejects the draft's own distribution (it has power)
    draft_joint = _exact_joint(draft, prompt, cfg)
    draft_counts = Counter()
    keys, weights = zip(*draft_joint.items())
    for j in torch.multinomial(torch.tensor(weights), n, replacement=True, generator=gen).tolist():
        draft_counts[keys[j]] += 1
    assert not _chi2_ok(draft_counts, joint, n)


def test_acceptance_rule_on_known_distributions():
    gen = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    bonus = Counter()
    for _ in range(3000):  # q == p: always accepted, and the bonus token is drawn from p's next row
        n, nxt = accept(p, p[:1].clone(), torch.tensor([1]), gen)
        assert n == 1
        bonus[int(nxt)] += 1
    assert all(abs(bonus[i] / 3000 - p[1, i].item()) < 0.04 for i in range(3))
    q = torch.tensor([[0.0, 0.0, 1.0]])  # drafted a token p gives 0
    n, nxt = accept(p, q, torch.tensor([2]), gen)
    assert n == 0 and nxt in (0, 1)  # residual max(0, p − q) ∝ p here
    hits = Counter(accept(p, torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([0]), gen)[0] for _ in range(2000))
    assert abs(hits[1] / 2000 - 0.5) < 0.05  # accepted with p/q = 0.5


def test_prompt_lookup():
    assert lookup([1, 2, 3, 9, 1, 2, 3], 3) == [9, 1, 2]
    assert lookup([1, 2, 3, 4, 5, 3], 2) == [4, 5]  # falls back to a 1-gram
    assert lookup([1, 2, 3, 4, 5, 3], 2, min_ngram=2) == []  # ... unless 1-grams are too short to trust
    assert lookup([1, 2, 3, 4, 2, 3], 2, min_ngram=2) == [4, 2]
    assert lookup([1, 2, 3], 2) == []


def test_draft_length_follows_acceptance_and_backs_off():
    d = DraftLength(8, 4)
    d.update(4, 4)
    assert d.allowed() == 6  # all accepted: two more
    d.update(6, 6)
    assert d.allowed() == 8  # capped at k_max
    for _ in range(7):
        d.update(d.k, 1)  # partly accepted: one fewer, no pause
    assert d.k == 1 and d.pause == 0
    d.update(0, 0)
    assert d.k == 1 and d.pause == 0  # nothing proposed: unchanged
    pauses = []
    for _ in range(6):  # one-token drafts rejected outright: pauses of 1, 2, 4, 8, 16, 16 plain steps
        d.update(1, 0)
        n = 0
        while d.allowed() == 0:
            n += 1
        pauses.append(n)
    assert pauses == [1, 2, 4, 8, 16, 16]
    d.update(1, 1)  # a fully accepted draft resets the back-off
    d.update(3, 0)
    assert d.pause == 0 and d.k == 2


@pytest.mark.parametrize("drafter", ["lookup", "first-layer"])
def test_adaptive_drafting_keeps_the_targets_greedy_output(sharp, prompt, drafter):
    model, tok = sharp
    draft = None if drafter == "lookup" else first_layers(model, 1)
    ref = _greedy(model, tok, prompt, 40)
    got, _, stats = speculative_ids(
        model, prompt, SamplingConfig(max_new_tokens=40), draft=draft, k=8, adaptive=True, min_ngram=2
    )
    assert got == ref and stats.proposed > 0


def test_text_interface_stop_and_stream(sharp):
    model, tok = sharp
    pieces = []
    res, timing, stats = speculative_generate(
        model, tok, "abcabcabc", SamplingConfig(max_new_tokens=16), on_text=lambda i, d: pieces.append(d)
    )
    assert "".join(pieces) == res.text and len(res.tokens) == 16 and res.finish == "length"
    stop = res.text[5:7]  # a stop string the unconstrained output reaches at character 5 at the latest
    cut = res.text.index(stop)
    pieces.clear()
    res2, _, _ = speculative_generate(
        model, tok, "abcabcabc", SamplingConfig(max_new_tokens=16, stop=(stop,)), on_text=lambda i, d: pieces.append(d)
    )
    assert res2.finish == "stop" and res2.text == res.text[:cut] and "".join(pieces) == res2.text
    assert len(res2.tokens) < 16


def test_decode_clock_counts_only_tokens_after_the_first_step(sharp, prompt):
    model, _ = sharp
    got, timing, stats = speculative_ids(model, prompt, SamplingConfig(max_new_tokens=20), draft=model, k=4)
    # as on the plain path: TTFT covers the prefill and the first token, decode the other 19
    assert len(got) == 20 and timing.new_tokens == 19 and timing.ttft_s > 0 and timing.decode_s > 0


def test_draft_with_another_vocabulary_is_refused(tiny):
    from transformers import LlamaForCausalLM

    from efflm.models.tiny import tiny_config

    model, _ = tiny
    other = LlamaForCausalLM(tiny_config(vocab_size=300))
    with pytest.raises(EfflmError, match="vocabulary"):
        speculative_ids(model, [5, 6], SamplingConfig(max_new_tokens=4), draft=other)
    with pytest.raises(EfflmError, match="draft layers"):
        first_layers(model, 2)


def test_evicting_cache_cannot_roll_back(tiny):
    from efflm.methods import config_from_dict, get

    model, _ = tiny
    cfg = config_from_dict({"method": "streaming_llm", "budget": 8})
    get("streaming_llm").apply(model, cfg)
    with pytest.raises(EfflmError, match="cannot roll back"):
        speculative_ids(model, list(range(3, 20)), SamplingConfig(max_new_tokens=8))
