"""The OpenAI API beyond plain sampling, through the official client: logprobs, n, penalties,
logit_bias, echo, structured output (llguidance) — each checked against what it means."""

import json
import re

import httpx
import jsonschema
import pytest
import torch

from tests.serve.conftest import Running, concurrently

MODEL = "tiny-llama"
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 5},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "address"],
    "additionalProperties": False,
}


def own_logprobs(server, ids: list[int], new: list[int]) -> torch.Tensor:
    """The model's log-softmax at each generated position, computed by a plain forward."""
    with torch.no_grad():
        logits = server.model(torch.tensor([ids + new])).logits[0, len(ids) - 1 : -1]
    return torch.log_softmax(logits.float(), -1)


def test_completion_logprobs_are_the_models_own_log_softmax(server):
    c = server.client()
    prompt = "Once upon a time"
    r = c.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    ids = server.tok(prompt)["input_ids"]
    new = greedy_ids(server, ids, len(lp.tokens))
    assert "".join(server.tok.decode([t]) for t in new) == "".join(lp.tokens)
    want = own_logprobs(server, ids, new)
    got = torch.tensor(lp.token_logprobs)
    torch.testing.assert_close(got, want.gather(1, torch.tensor(new)[:, None])[:, 0], atol=2e-4, rtol=0)
    assert all(1 <= len(t) <= 3 for t in lp.top_logprobs)  # keyed by text: byte tokens may share "\ufffd"
    best = max(lp.top_logprobs[0].values())
    assert abs(best - float(want[0].max())) < 2e-4 and lp.text_offset[0] == 0


def greedy_ids(server, ids: list[int], n: int) -> list[int]:
    """The model's own greedy continuation, by plain forwards."""
    out = []
    with torch.no_grad():
        for _ in range(n):
            out.append(int(server.model(torch.tensor([ids + out])).logits[0, -1].argmax()))
    return out


def test_chat_logprobs_and_top_logprobs(server):
    c = server.client()
    msgs = [{"role": "user", "content": "Hi"}]
    r = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=6, temperature=0, logprobs=True,
                                  top_logprobs=2)  # fmt: skip
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-5)  # greedy: the top one
        assert bytes(entry.bytes).decode(errors="replace") == entry.token or entry.token == "\ufffd"
    assert "".join(e.token for e in content) == r.choices[0].message.content
    chunks = list(c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=6, temperature=0, logprobs=True,
                                            stream=True))  # fmt: skip
    streamed = [
        e.logprob for ch in chunks if ch.choices and ch.choices[0].logprobs for e in ch.choices[0].logprobs.content
    ]
    assert streamed == pytest.approx([e.logprob for e in content], abs=1e-6)


def test_n_completions_share_a_prompt(server):
    c = server.client()
    greedy = c.completions.create(model=MODEL, prompt="In the beginning", max_tokens=10, temperature=0, n=3)
    assert [ch.index for ch in greedy.choices] == [0, 1, 2] and len({ch.text for ch in greedy.choices}) == 1
    assert greedy.usage.completion_tokens % 3 == 0 and greedy.usage.completion_tokens > 0
    sampled = c.completions.create(model=MODEL, prompt="In the beginning", max_tokens=12, temperature=1.0, n=3, seed=5)
    assert len({ch.text for ch in sampled.choices}) == 3
    again = c.completions.create(model=MODEL, prompt="In the beginning", max_tokens=12, temperature=1.0, n=3, seed=5)
    assert [ch.text for ch in again.choices] == [ch.text for ch in sampled.choices]
    stream = list(c.completions.create(model=MODEL, prompt="In the beginning", max_tokens=12, temperature=1.0, n=3,
                                       seed=5, stream=True))  # fmt: skip
    texts = ["".join(ch.choices[0].text for ch in stream if ch.choices and ch.choices[0].index == i) for i in range(3)]
    assert texts == [ch.text for ch in sampled.choices]


def test_penalties_and_logit_bias(server):
    c = server.client()
    base = c.completions.create(model=MODEL, prompt="A B C D", max_tokens=24, temperature=0)
    pen = c.completions.create(model=MODEL, prompt="A B C D", max_tokens=24, temperature=0, frequency_penalty=2.0,
                               presence_penalty=2.0)  # fmt: skip
    ids = server.tok(pen.choices[0].text, add_special_tokens=False)["input_ids"]
    base_ids = server.tok(base.choices[0].text, add_special_tokens=False)["input_ids"]
    assert len(set(ids)) / len(ids) >= len(set(base_ids)) / len(base_ids)  # repeats less
    forced = server.tok("z", add_special_tokens=False)["input_ids"][0]
    biased = c.completions.create(model=MODEL, prompt="A B C D", max_tokens=5, temperature=0,
                                  logit_bias={str(forced): 100})  # fmt: skip
    assert biased.choices[0].text == "z" * 5


def test_echo_returns_the_prompt_and_its_logprobs(server):
    c = server.client()
    prompt = "Hello there, how"
    r = c.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0, echo=True, logprobs=1)
    plain = c.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0)
    assert r.choices[0].text == prompt + plain.choices[0].text
    lp = r.choices[0].logprobs
    ids = server.tok(prompt)["input_ids"]
    assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == len(ids) + 4
    with torch.no_grad():
        want = torch.log_softmax(server.model(torch.tensor([ids])).logits[0, :-1].float(), -1)
    got = torch.tensor(lp.token_logprobs[1 : len(ids)])
    torch.testing.assert_close(got, want.gather(1, torch.tensor(ids[1:])[:, None])[:, 0], atol=2e-4, rtol=0)


def test_json_schema_output_is_valid_at_temperature_one(server):
    c = server.client()
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
    msgs = [{"role": "user", "content": "A person, as JSON."}]

    def one(i):
        r = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=200, temperature=1.0, seed=i,
                                      response_format=fmt)  # fmt: skip
        return r.choices[0]

    for choice in concurrently(one, 4):  # constrained rows share steps
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)
    obj = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=120, temperature=0.7,
                                    response_format={"type": "json_object"})  # fmt: skip
    if obj.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(obj.choices[0].message.content), dict)


def test_regex_and_grammar_extensions(server):
    c = server.client()
    r = c.completions.create(model=MODEL, prompt="Date:", max_tokens=20, temperature=1.0, seed=3,
                             extra_body={"guided_regex": r"20[0-9]{2}-(0[1-9]|1[0-2])-[0-3][0-9]"})  # fmt: skip
    assert (
        re.fullmatch(r"20[0-9]{2}-(0[1-9]|1[0-2])-[0-3][0-9]", r.choices[0].text)
        and r.choices[0].finish_reason == "stop"
    )
    lark = 'start: "yes" | "no" | "maybe"'
    g = c.completions.create(model=MODEL, prompt="Answer:", max_tokens=10, temperature=1.0, seed=1,
                             extra_body={"guided_grammar": lark})  # fmt: skip
    assert g.choices[0].text in ("yes", "no", "maybe")


def test_a_bad_schema_is_a_400_naming_its_field(server):
    r = httpx.post(server.url + "/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"
    assert "does not compile" in r.json()["error"]["message"]


def test_one_at_a_time_models_refuse_what_they_cannot_serve():
    s = Running(recipe=[{"method": "speculative", "k": 2, "draft": "layers", "draft_layers": 1}], max_batch=2)
    try:
        body = {"model": MODEL, "prompt": "x", "max_tokens": 2}
        for extra, param in (
            ({"n": 2}, "n"),
            ({"logprobs": 1}, "logprobs"),
            ({"guided_regex": "a"}, "response_format"),
        ):
            r = httpx.post(s.url + "/v1/completions", json={**body, **extra})
            assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        assert httpx.post(s.url + "/v1/completions", json=body).status_code == 200
    finally:
        s.stop()


def test_a_prompt_lookup_recipe_serves_every_feature_in_the_batch_and_counts_drafts():
    s = Running(recipe=[{"method": "speculative", "k": 3, "min_ngram": 1}], max_batch=4)
    try:
        assert s.batcher.batched and s.batcher.lookup is not None
        body = {"model": MODEL, "prompt": "a b c a b c a b c a b", "max_tokens": 12, "n": 2, "logprobs": 1,
                "temperature": 0}  # fmt: skip
        r = httpx.post(s.url + "/v1/completions", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == r.json()["choices"][1]["text"]
        metrics = httpx.get(s.url + "/metrics").text
        drafted = [ln for ln in metrics.splitlines() if ln.startswith("efflm:spec_decode_num_draft_tokens_total")]
        assert drafted and float(drafted[0].split()[-1]) > 0, metrics
    finally:
        s.stop()
