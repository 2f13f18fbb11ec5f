"""Many LoRA adapters on one server: rows with different adapters share a batch and each equals
that adapter served alone; adapters load and unload at runtime behind the API key; bad input is
an OpenAI-shaped 400."""

import httpx
import openai
import pytest
import torch

from efflm.finetune.peft_files import save_adapter
from efflm.methods import config_from_dict, get
from efflm.models.sources import ready
from efflm.models.tiny import tiny_llama
from tests.serve.conftest import Running, concurrently

PROMPTS = ["The cat", "Once upon a time", "A B C", "Hello world, this is"]


def make_adapter(path, seed, method="lora", targets="all-linear"):
    model = ready(tiny_llama()[0])
    cfg = config_from_dict({"method": method, "r": 4, "target_modules": targets})
    model = get(method).apply(model, cfg, None)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(("lora_A.weight", "lora_B.weight")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    save_adapter(model, cfg, path, {})
    return str(path)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": make_adapter(root / "a", 1),
        "b": make_adapter(root / "b", 2, targets=["q_proj", "v_proj"]),
        "dora": make_adapter(root / "dora", 3, method="dora"),
    }


@pytest.fixture(scope="module")
def lora_server(dirs):
    s = Running(max_batch=4, max_queue=16, lora=[("a", dirs["a"]), ("b", dirs["b"])], api_key="k")
    yield s
    s.stop()


def _complete(client, model, prompt):
    r = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0, logprobs=0)
    return r.choices[0].text, r.choices[0].logprobs.token_logprobs, r.model


def test_rows_with_different_adapters_share_a_batch_and_equal_each_alone(lora_server):
    c = lora_server.client(api_key="k")
    models = ["a", "b", "tiny-llama", "a"]
    alone = [_complete(c, m, p) for m, p in zip(models, PROMPTS)]
    steps = []
    lora_server.batcher.on_step = steps.append
    together = concurrently(lambda i: _complete(c, models[i], PROMPTS[i]), 4)
    lora_server.batcher.on_step = lambda info: None
    assert max(s["decode_rows"] for s in steps) >= 2  # they did share decode steps
    for (t1, lp1, m1), (t2, lp2, m2) in zip(alone, together):
        assert (t1, m1) == (t2, m2)
        torch.testing.assert_close(torch.tensor(lp1), torch.tensor(lp2), atol=2e-4, rtol=0)
    base = _complete(c, "tiny-llama", PROMPTS[0])
    assert alone[0][0] != base[0] or alone[0][1] != base[1]  # adapter a changes the output
    assert alone[0][2] == "a"


def test_an_adapter_served_equals_the_model_with_it_applied(lora_server, dirs):
    from efflm.finetune.peft_files import load_adapter
    from efflm.inference.engine import Engine

    model = load_adapter(ready(tiny_llama()[0]), dirs["b"])[0]
    ids = lora_server.tok(PROMPTS[1])["input_ids"]
    e = Engine(model)
    e.start(1, 64)
    with torch.inference_mode():
        logits = e.feed(torch.tensor([ids]))[0, -1]
    want = torch.log_softmax(logits.float(), -1)
    c = lora_server.client(api_key="k")
    r = c.completions.create(model="b", prompt=PROMPTS[1], max_tokens=1, temperature=0, logprobs=0)
    assert r.choices[0].logprobs.tokens[0] == lora_server.tok.decode([int(want.argmax())])
    assert abs(r.choices[0].logprobs.token_logprobs[0] - float(want.max())) < 2e-4


def test_models_lists_adapters_with_their_parent(lora_server, dirs):
    cards = {m.id: m for m in lora_server.client(api_key="k").models.list().data}
    assert set(cards) == {"tiny-llama", "a", "b"}
    assert cards["a"].parent == "tiny-llama" and cards["a"].root == dirs["a"]


def test_load_and_unload_at_runtime(lora_server, dirs):
    url, auth = lora_server.url, {"Authorization": "Bearer k"}
    c = lora_server.client(api_key="k")
    assert httpx.post(url + "/v1/load_lora_adapter", json={"lora_name": "c", "lora_path": dirs["a"]}).status_code == 401
    r = httpx.post(url + "/v1/load_lora_adapter", json={"lora_name": "c", "lora_path": dirs["a"]}, headers=auth)
    assert r.status_code == 200, r.text
    assert _complete(c, "c", PROMPTS[0])[:2] == _complete(c, "a", PROMPTS[0])[:2]  # same files, same answer
    r = httpx.post(url + "/v1/unload_lora_adapter", json={"lora_name": "c"}, headers=auth)
    assert r.status_code == 200, r.text
    with pytest.raises(openai.BadRequestError) as e:
        _complete(c, "c", PROMPTS[0])
    assert e.value.body["code"] == "model_not_found"
    assert "c" not in {m.id for m in c.models.list().data}


@pytest.mark.parametrize(
    "path, body, needle",
    [
        ("load", {"lora_name": "a", "lora_path": "x"}, "is taken"),
        ("load", {"lora_name": "tiny-llama", "lora_path": "x"}, "is taken"),
        ("load", {"lora_name": "d", "lora_path": "/nonexistent"}, "not an adapter directory"),
        ("load", {"lora_name": "d", "lora_path": "DORA"}, "a dora adapter is not served per request"),
        ("load", {"lora_name": "bad name!", "lora_path": "A"}, "adapter name"),
        ("load", {"lora_name": "d"}, "'lora_path' must be a non-empty string"),
        ("load", {"lora_name": "d", "lora_path": "A", "load_inplace": True}, "'load_inplace' is not served"),
        ("unload", {"lora_name": "nope"}, "no adapter named 'nope'"),
        ("unload", {"lora_name": 3}, "'lora_name' must be a non-empty string"),
    ],
)
def test_bad_adapter_requests_are_400s(lora_server, dirs, path, body, needle):
    body = {k: {"DORA": dirs["dora"], "A": dirs["a"]}.get(v, v) for k, v in body.items()}
    r = httpx.post(f"{lora_server.url}/v1/{path}_lora_adapter", json=body, headers={"Authorization": "Bearer k"})
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]


def test_unknown_adapter_in_a_request_is_a_400(lora_server):
    with pytest.raises(openai.BadRequestError) as e:
        _complete(lora_server.client(api_key="k"), "zzz", "hi")
    assert e.value.body["code"] == "model_not_found" and "'a'" in e.value.body["message"]


def test_a_server_without_lora_refuses_loading(server, dirs):
    r = httpx.post(server.url + "/v1/load_lora_adapter", json={"lora_name": "c", "lora_path": dirs["a"]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "lora_disabled"


def test_an_adapter_in_use_is_not_unloaded(lora_server):
    import threading

    from efflm.inference.generate import SamplingConfig
    from efflm.serve.batcher import Request

    b = lora_server.batcher
    req = Request([5, 6, 7], SamplingConfig(max_new_tokens=4), lambda kind, v: None, adapter="b")
    done, box = threading.Event(), []
    with b._cv:  # the request is queued before the scheduler runs the check (controls go first)
        b.submit(req)
        b._controls.append((lambda: b.in_use("b"), done, box))
    assert done.wait(30) and box == [1]
    assert lora_server.wait_idle()
    assert b.call(lambda: b.in_use("b")) == 0
