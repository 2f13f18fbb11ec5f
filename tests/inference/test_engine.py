"""The static-KV-cache decode path against transformers, batching, sampling, stop strings."""

import pytest
import torch

from efflm.core.errors import EfflmError
from efflm.inference.engine import Engine
from efflm.inference.generate import SamplingConfig, encode, generate, generate_ids, probs
from efflm.methods import config_from_dict, get

TOL = 1e-4  # fp32 logits, tiny-llama: our loop vs transformers' forward (observed ~3e-7)

RECIPES = {
    "dense": [],
    "rtn-w4": [{"method": "rtn", "bits": 4, "group_size": 32}],
    "llm_pruner": [{"method": "llm_pruner", "ratio": 0.5, "importance": "magnitude"}],
    "svd": [{"method": "svd", "ratio": 0.3}],
}


@pytest.mark.parametrize("name", RECIPES)
def test_decode_matches_transformers_step_by_step(name, tiny):
    model, _ = tiny
    for step in RECIPES[name]:
        cfg = config_from_dict(step)
        model = get(cfg.method).apply(model, cfg, None)
    ids = torch.randint(3, 259, (1, 40), generator=torch.Generator().manual_seed(2))
    ref = model(ids).logits
    e = Engine(model)
    e.start(1, 40)
    got = [e.feed(ids[:, :16], all_logits=True)]
    got += [e.feed(ids[:, t : t + 1]) for t in range(16, 40)]
    assert (torch.cat(got, 1) - ref).abs().max() < TOL


def test_bf16_packed_model_decodes_like_its_own_forward(tiny):
    model, _ = tiny
    for step in ({"method": "rtn", "bits": 4, "group_size": 32}, {"method": "dense", "dtype": "bfloat16"}):
        cfg = config_from_dict(step)
        model = get(cfg.method).apply(model, cfg, None)
    ids = torch.randint(3, 259, (1, 20), generator=torch.Generator().manual_seed(3))
    ref = model(ids).logits.float()
    e = Engine(model)
    e.start(1, 20)
    got = torch.cat([e.feed(ids[:, :8], all_logits=True)] + [e.feed(ids[:, t : t + 1]) for t in range(8, 20)], 1)
    assert (got - ref).abs().max() < 0.1 * ref.abs().max()  # bf16 rounding, different op order
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9


def test_left_padded_batch_equals_each_sequence_alone(sharp):
    model, tok = sharp
    prompts = ["To be, or not to be", "Hi"]
    cfg = SamplingConfig(max_new_tokens=12)
    batch, _ = generate(model, tok, prompts, cfg)
    for p, b in zip(prompts, batch):
        alone, _ = generate(model, tok, [p], cfg)
        assert alone[0].tokens == b.tokens
    ids, valid = encode(tok, prompts)
    assert valid[1].sum() < valid.shape[1]  # the second row really is padded
    e = Engine(model)
    e.start(2, ids.shape[1])
    padded = e.feed(ids, valid, all_logits=True)[1, valid[1]]
    e.start(1, int(valid[1].sum()))
    single = e.feed(ids[1:, valid[1]], all_logits=True)[0]
    assert (padded - single).abs().max() < TOL


def test_stop_string_truncates_and_finishes(sharp):
    model, tok = sharp
    full, _ = generate(model, tok, ["once upon"], SamplingConfig(max_new_tokens=20))
    text = full[0].text
    stop = text[5:7]
    pieces = []
    cut, _ = generate(
        model,
        tok,
        ["once upon"],
        SamplingConfig(max_new_tokens=20, stop=(stop,)),
        on_text=lambda i, d: pieces.append(d),
    )
    assert cut[0].finish == "stop" and cut[0].text == text[: text.find(stop)]
    assert "".join(pieces) == cut[0].text  # no piece of the stop string was ever streamed


def test_streamed_text_equals_final_text(sharp):
    model, tok = sharp
    pieces = []
    res, timing = generate(
        model, tok, ["abc"], SamplingConfig(max_new_tokens=10), on_text=lambda i, d: pieces.append(d)
    )
    assert "".join(pieces) == res[0].text and timing.new_tokens == 9 and timing.tok_s > 0


def test_chat_template_is_applied(tiny):
    _, tok = tiny
    ids, _ = encode(tok, ["hello"], chat=True)
    assert tok.decode(ids[0]).endswith("assistant\n")


def test_sampling_distribution_math():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    p = probs(logits, SamplingConfig(temperature=1.0))
    assert torch.allclose(p, logits.softmax(-1))
    assert probs(logits, SamplingConfig()).tolist() == [[1.0, 0.0, 0.0, 0.0]]  # greedy
    k2 = probs(logits, SamplingConfig(temperature=1.0, top_k=2))
    assert torch.allclose(k2, torch.tensor([[2.0, 1.0]]).softmax(-1).new_tensor([[0.7311, 0.2689, 0, 0]]), atol=1e-4)
    full = logits.softmax(-1)[0]
    nucleus = probs(logits, SamplingConfig(temperature=1.0, top_p=0.8))  # 0.644 < 0.8 -> two tokens
    assert torch.allclose(nucleus[0, :2], full[:2] / full[:2].sum()) and nucleus[0, 2:].sum() == 0
    hot = probs(logits, SamplingConfig(temperature=0.01))
    assert hot[0, 0] > 0.999


def test_seeded_sampling_is_reproducible(sharp):
    model, tok = sharp
    cfg = SamplingConfig(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7)
    a, _ = generate(model, tok, ["x"], cfg)
    b, _ = generate(model, tok, ["x"], cfg)
    assert a[0].tokens == b[0].tokens


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"max_new_tokens": 0}, "max new tokens"),
        ({"max_new_tokens": -3}, "max new tokens"),
        ({"top_p": 0.0}, "top-p"),
        ({"top_p": 1.5}, "top-p"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": -1}, "top-k"),
        ({"stop": ("",)}, "stop"),
    ],
)
def test_bad_sampling_settings(kwargs, pattern):
    with pytest.raises(EfflmError, match=pattern):
        SamplingConfig(**kwargs)


def test_prompt_longer_than_cache(tiny):
    model, tok = tiny
    with pytest.raises(EfflmError, match="longer than the KV cache"):
        generate(model, tok, ["x" * 50], SamplingConfig(max_new_tokens=4), max_len=20)
    ids = torch.randint(3, 259, (1, 30))
    with pytest.raises(EfflmError, match="KV cache full"):
        e = Engine(model)
        e.start(1, 16)
        e.feed(ids)


def test_generation_stops_at_the_cache_end(tiny):
    model, tok = tiny
    out, _ = generate_ids(
        model,
        tok,
        torch.full((1, 10), 5),
        torch.ones(1, 10, dtype=torch.bool),
        SamplingConfig(max_new_tokens=50),
        max_len=16,
    )
    assert len(out[0].tokens) == 6 and out[0].finish == "length"  # 16 slots − 10 prompt tokens
