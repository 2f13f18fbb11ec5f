"""/v1/embeddings through the official client: unit-length mean-pooled final hidden states, equal to
the model's own forward; base64 and float agree; an adapter changes them; bad input is a 400."""

import httpx
import numpy as np
import openai
import pytest
import torch

from tests.serve.conftest import Running
from tests.serve.test_multi_lora_serve import make_adapter

MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def emb_server(tmp_path_factory):
    path = make_adapter(tmp_path_factory.mktemp("emb") / "a", 4)
    s = Running(max_batch=2, lora=[("a", path)])
    yield s
    s.stop()


def _reference(server, text):
    ids = server.tok(text, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        server.model.efflm_routing.rows = [None]
        h = server.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0].mean(0)
    return (h / h.norm()).numpy()


def test_embeddings_are_the_models_mean_pooled_unit_vectors(emb_server):
    c = emb_server.client()
    texts = ["hello world", "a much longer input, with more tokens in it"]
    r = c.embeddings.create(model=MODEL, input=texts)  # the client asks for base64 and decodes it
    assert [d.index for d in r.data] == [0, 1] and r.usage.prompt_tokens > 0
    for d, text in zip(r.data, texts):
        v = np.array(d.embedding)
        assert abs(np.linalg.norm(v) - 1) < 1e-5
        np.testing.assert_allclose(v, _reference(emb_server, text), atol=1e-5)
    f = c.embeddings.create(model=MODEL, input=texts[0], encoding_format="float")
    np.testing.assert_allclose(f.data[0].embedding, r.data[0].embedding, atol=1e-7)
    ids = emb_server.tok(texts[0], add_special_tokens=False)["input_ids"]
    by_ids = c.embeddings.create(model=MODEL, input=ids, encoding_format="float")
    assert by_ids.data[0].embedding == f.data[0].embedding
    other = c.embeddings.create(model="a", input=texts[0], encoding_format="float")
    assert not np.allclose(other.data[0].embedding, f.data[0].embedding, atol=1e-3)


@pytest.mark.parametrize(
    "body, param",
    [
        ({"input": "x", "dimensions": 8}, "dimensions"),
        ({"input": "x", "model": "nope"}, "model"),
        ({"input": []}, "input"),
        ({"input": [[1, 2], [10**9]]}, "input"),
        ({"input": [{"a": 1}]}, "input"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x" * 3000}, "input"),
    ],
)
def test_bad_embedding_requests_are_400s(emb_server, body, param):
    r = httpx.post(emb_server.url + "/v1/embeddings", json={"model": MODEL, **body})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_the_client_raises_on_a_bad_request(emb_server):
    with pytest.raises(openai.BadRequestError):
        emb_server.client().embeddings.create(model=MODEL, input=[])


def test_fuzzed_bodies_of_the_new_endpoints_never_get_a_500(emb_server):
    """Random JSON values in the fields /v1/embeddings and the adapter endpoints read: 200 or an
    OpenAI-shaped 400, never a 500."""
    import json
    import random

    rng = random.Random(1)
    atoms = [None, True, 0, -1, 1.5, 1e300, "", "x", "\ud83d", "\x00", [], {}, [1, "a"], [[1], [2, 3]], [3, 4],
             [-5], {"a": 1}, "b", "tiny-llama", "float", "base64", "/", "/nonexistent", "../a"]  # fmt: skip
    fields = {
        "/v1/embeddings": ["model", "input", "encoding_format", "user", "dimensions"],
        "/v1/load_lora_adapter": ["lora_name", "lora_path", "load_inplace"],
        "/v1/unload_lora_adapter": ["lora_name"],
    }
    for i in range(120):
        path = rng.choice(sorted(fields))
        body = {"model": MODEL, "input": "x"} if path.endswith("embeddings") else {}
        for name in rng.sample(fields[path], rng.randint(1, len(fields[path]))):
            body[name] = rng.choice(atoms)
        raw = json.dumps(body).encode()
        r = httpx.post(emb_server.url + path, content=raw, headers={"content-type": "application/json"}, timeout=60)
        assert r.status_code in (200, 400), (i, body, r.status_code, r.text)
        if r.status_code == 400:
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}, body
