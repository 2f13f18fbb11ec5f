"""`efflm serve` through the official openai client (and raw HTTP for malformed bodies)."""

import json

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.serve.conftest import concurrently

PROMPTS = ["The quick brown fox", "Once upon a time", "In the beginning", "A B C D E F G", "Hello there, how"]


def _complete(client, prompt, n=24, **kw):
    return client.completions.create(model="tiny-llama", prompt=prompt, max_tokens=n, temperature=0, **kw)


def test_models_and_health(server):
    c = server.client()
    assert [m.id for m in c.models.list().data] == ["tiny-llama"]
    assert httpx.get(server.url + "/health").status_code == 200


def test_completion_usage_and_length(server):
    r = _complete(server.client(), PROMPTS[0], n=12)
    assert r.object == "text_completion" and r.choices[0].finish_reason in ("length", "stop")
    prompt_len = len(server.tok(PROMPTS[0], add_special_tokens=True)["input_ids"])
    assert r.usage.prompt_tokens == prompt_len
    assert r.usage.total_tokens == prompt_len + r.usage.completion_tokens
    if r.choices[0].finish_reason == "length":
        assert r.usage.completion_tokens == 12


def test_streaming_equals_the_whole_answer_and_reports_usage(server):
    c = server.client()
    whole = _complete(c, PROMPTS[1], n=20).choices[0].text
    chunks = list(_complete(c, PROMPTS[1], n=20, stream=True, stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == whole
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] in ("length", "stop")


def test_chat_streams_with_a_role_first(server):
    if not getattr(server.tok, "chat_template", None):
        r = httpx.post(server.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 400 and "chat template" in r.json()["error"]["message"]
        return
    c = server.client()
    msgs = [{"role": "user", "content": "Say something."}]
    whole = c.chat.completions.create(model="tiny-llama", messages=msgs, max_tokens=10, temperature=0)
    chunks = list(
        c.chat.completions.create(model="tiny-llama", messages=msgs, max_tokens=10, temperature=0, stream=True)
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == whole.choices[0].message.content


def test_stop_string_cuts_the_text(server):
    c = server.client()
    text = _complete(c, PROMPTS[2], n=30).choices[0].text
    words = [w for w in text.split() if len(w) > 1]
    if not words:
        pytest.skip("the tiny model's greedy text has no word to stop at")
    stop = words[len(words) // 2]
    r = _complete(c, PROMPTS[2], n=30, stop=[stop])
    assert r.choices[0].finish_reason == "stop" and stop not in r.choices[0].text
    assert text.startswith(r.choices[0].text)


def test_concurrent_greedy_requests_equal_their_solo_answers(server):
    c = server.client()
    lengths = [40, 7, 25, 33, 12]
    solo = [_complete(c, p, n=n).choices[0].text for p, n in zip(PROMPTS, lengths)]
    got = concurrently(lambda i: _complete(server.client(), PROMPTS[i], n=lengths[i]).choices[0].text, len(PROMPTS))
    assert got == solo


def test_seeded_sampling_repeats(server):
    c = server.client()
    a = c.completions.create(model="tiny-llama", prompt=PROMPTS[3], max_tokens=15, temperature=0.9, top_p=0.9, seed=7)
    b = c.completions.create(model="tiny-llama", prompt=PROMPTS[3], max_tokens=15, temperature=0.9, top_p=0.9, seed=7)
    assert a.choices[0].text == b.choices[0].text


@pytest.mark.parametrize(
    "body,param",
    [
        ({"model": "gpt-4", "prompt": "x"}, "model"),
        ({"prompt": "x", "max_tokens": "ten"}, "max_tokens"),
        ({"prompt": "x", "temperature": 5}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "n": 5}, "n"),  # above --max-n (4)
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "tools": []}, "tools"),  # a field not served is refused, never ignored
        ({"prompt": "x", "response_format": {"type": "json_object"}}, "response_format"),  # chat only
        ({"prompt": "x", "logprobs": 6}, "logprobs"),
        ({"prompt": "x", "logit_bias": {"99999": 1}}, "logit_bias"),
        ({"prompt": "x", "logit_bias": {"5": 101}}, "logit_bias"),
        ({"prompt": "x", "presence_penalty": 3}, "presence_penalty"),
        ({"prompt": "x", "guided_regex": "[a-"}, "guided_regex"),
        ({"prompt": "x", "guided_json": {"type": "nope"}}, "guided_json"),
        ({"prompt": "x", "guided_regex": "a+", "guided_json": {"type": "object"}}, "guided_regex"),
        ({"prompt": 3}, "prompt"),
        ({"prompt": "x", "max_tokens": 10_000}, "max_tokens"),
        ({"prompt": "x", "stop": [""]}, "stop"),
        ({"prompt": "x", "stream": "yes"}, "stream"),
    ],
)
def test_bad_requests_are_openai_shaped_400s(server, body, param):
    r = httpx.post(server.url + "/v1/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param and err["message"]


def test_malformed_json_and_unknown_paths(server):
    r = httpx.post(server.url + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/completions", content=b"[1, 2]")
    assert r.status_code == 400
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()


@pytest.mark.parametrize(
    "path,raw,param",
    [
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi \\ud83d"}]}', "messages"),
        (
            "/v1/chat/completions",
            b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udc00"}]}]}',
            "messages",
        ),  # fmt: skip
        ("/v1/completions", b'{"prompt": "\\ud83d", "max_tokens": 4}', "prompt"),
        ("/v1/completions", b'{"prompt": "x", "stop": ["\\ud83d"]}', "stop"),
    ],
)
def test_a_lone_surrogate_is_a_400_not_a_500(server, path, raw, param):
    """JSON's \\uXXXX escapes can spell half a UTF-16 pair, which Python decodes to a lone
    surrogate that no tokenizer can take: the request is invalid text, answered as such."""
    r = httpx.post(server.url + path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and "surrogate" in err["message"]
    ok = httpx.post(server.url + path, content=raw.replace(b"\\ud83d", b"\\ud83d\\ude00").replace(b"\\udc00", b"x"),
                    headers={"content-type": "application/json"})  # fmt: skip
    assert ok.status_code == 200, ok.text  # a whole pair (an emoji) is ordinary text


def test_fuzzed_json_bodies_never_get_a_500(server):
    """Random JSON values in every field the endpoints read: each answer is 200 or an OpenAI-shaped 400."""
    import random

    rng = random.Random(0)
    atoms = [None, True, 0, -1, 1.5, 1e300, "", "x", "\ud83d", "\x00", "é" * 3, [], {}, [1, "a"], {"a": 1},
             {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}, {"type": "json_object"},
             {"type": 3}, {"5": 1.0}, {"-1": 2}, "[0-9]+", "(", {"type": "string", "maxLength": 2}, "required",
             [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
             {"type": "function", "function": {"name": "f"}}, [{"type": "function"}]]  # fmt: skip
    sampling = ["max_tokens", "temperature", "top_p", "seed", "stop", "stream", "model", "n", "logprobs",
                "presence_penalty", "frequency_penalty", "logit_bias", "guided_json", "guided_regex",
                "guided_grammar", "unknown_field"]  # fmt: skip
    fields = {
        "/v1/completions": ["prompt", "echo", *sampling],
        "/v1/chat/completions": [
            "messages",
            "top_logprobs",
            "response_format",
            "max_completion_tokens",
            "tools",
            "tool_choice",
            *sampling,
        ],
    }
    for i in range(240):
        path = rng.choice(sorted(fields))
        body = {"prompt": "x", "max_tokens": 2} if path == "/v1/completions" else {
            "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}  # fmt: skip
        for name in rng.sample(fields[path], rng.randint(1, 3)):
            body[name] = rng.choice(atoms)
        if path.endswith("chat/completions") and rng.random() < 0.3:
            body["messages"] = [{"role": rng.choice(["user", "system", 3, None]), "content": rng.choice(atoms)}]
        raw = json.dumps(body).encode()
        r = httpx.post(server.url + path, content=raw, headers={"content-type": "application/json"}, timeout=60)
        assert r.status_code in (200, 400), (i, body, r.status_code, r.text)
        if r.status_code == 400:
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}, body


def test_the_openai_client_sees_400_as_bad_request(server):
    with pytest.raises(openai.BadRequestError):
        server.client().completions.create(model="tiny-llama", prompt="x", max_tokens=10_000)


def test_a_disconnected_stream_frees_its_row(server):
    with httpx.stream("POST", server.url + "/v1/completions",
                      json={"prompt": PROMPTS[4], "max_tokens": 200, "stream": True, "temperature": 0}) as r:  # fmt: skip
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
    assert server.wait_idle(10)
    assert server.batcher.slots_in_use() == 0


def test_metrics_parse_and_count_what_was_served(server):
    before = _metrics(server)
    r = _complete(server.client(), PROMPTS[0], n=9)
    after = _metrics(server)
    assert after["efflm:generation_tokens_total"] - before["efflm:generation_tokens_total"] == r.usage.completion_tokens
    assert after["efflm:prompt_tokens_total"] - before["efflm:prompt_tokens_total"] == r.usage.prompt_tokens
    assert after["efflm:time_to_first_token_seconds_count"] == before["efflm:time_to_first_token_seconds_count"] + 1
    assert after["efflm:num_requests_running"] == 0 and "efflm:kv_cache_slots_in_use" in after


def _metrics(server) -> dict:
    text = httpx.get(server.url + "/metrics").text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name] = out.get(s.name, 0) + s.value
    return out


def test_playground_page_is_self_contained(server):
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and "<title>efflm playground</title>" in r.text and "tiny-llama" in r.text
    assert "http://" not in r.text and "https://" not in r.text  # no CDN


def test_api_key_is_required_when_set():
    from tests.serve.conftest import Running  # noqa: PLC0415

    s = Running(api_key="sekret", max_batch=2)
    try:
        with pytest.raises(openai.AuthenticationError):
            s.client(api_key="wrong").models.list()
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "x"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert s.client(api_key="sekret").completions.create(model="tiny-llama", prompt="x", max_tokens=2).usage
    finally:
        s.stop()


def test_queue_full_is_429_with_retry_after():
    from starlette.testclient import TestClient

    from efflm.inference.generate import SamplingConfig
    from efflm.io.load import load
    from efflm.serve.app import build_app
    from efflm.serve.batcher import Batcher, Request

    model, tok = load("tiny-llama")
    b = Batcher(model, tok, max_batch=1, max_queue=1, max_len=64)  # not started: nothing leaves the queue
    b.submit(Request([1, 2, 3], SamplingConfig(max_new_tokens=2), lambda k, v: None))
    r = TestClient(build_app(b, "tiny-llama")).post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["type"] == "rate_limit_error"
    json.dumps(r.json())


def test_compress_prompt_shortens_prompts_and_last_user_messages_before_tokenizing():
    from efflm.io.load import load
    from efflm.serve.protocol import job

    _, tok = load("tiny-llama")
    seen = []

    def compress(text):
        seen.append(text)
        return text[-5:]

    spec = job({"model": "m", "prompt": "a long prompt here", "max_tokens": 2}, False, tok, "m", 64, compress)
    assert spec.prompt_ids == list(tok("prompt here"[-5:], add_special_tokens=True)["input_ids"])
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    msgs = [{"role": "user", "content": "first question"}, {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "the last question"}]  # fmt: skip
    spec = job({"model": "m", "messages": msgs, "max_tokens": 2}, True, tok, "m", 64, compress)
    assert seen == ["a long prompt here", "the last question"]
    assert spec.prompt_ids == list(tok.apply_chat_template(
        [*msgs[:2], {"role": "user", "content": "stion"}], add_generation_prompt=True, tokenize=True, return_dict=False))  # fmt: skip
