"""`efflm serve` on every model family beside Llama: greedy chat answers through the openai client
equal the model's own greedy decode, alone and batched (the batcher's padded rows, each layer's
sliding window and soft-caps included)."""

import pytest
import torch

from tests.serve.conftest import Running, concurrently

pytestmark = pytest.mark.families
FAMILIES = [
    "tiny-mistral",
    "tiny-qwen3",
    "tiny-gemma2",
    "tiny-gemma3",
    "tiny-phi3",
    "tiny-mixtral",
    "tiny-qwen2-moe",
    "tiny-qwen3-moe",
    "tiny-opt",
    "tiny-gpt2",
]
QUESTIONS = ["Hi", "Tell me a long story about the sea and the sky", "2+2?"]


def greedy(model, ids: list[int], n: int) -> list[int]:
    seq = list(ids)
    with torch.no_grad():
        for _ in range(n):
            seq.append(model(torch.tensor([seq])).logits[0, -1].argmax().item())
    return seq[len(ids) :]


@pytest.mark.parametrize("spec", FAMILIES)
def test_greedy_chat_on_each_family_equals_the_models_own_decode(spec):
    srv = Running(spec)
    try:
        want = []
        for q in QUESTIONS:
            ids = srv.tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
            ids = ids["input_ids"] if hasattr(ids, "keys") else ids
            want.append(srv.tok.decode(greedy(srv.model, ids, 12), skip_special_tokens=True))

        def ask(i):
            r = srv.client().chat.completions.create(
                model=spec, messages=[{"role": "user", "content": QUESTIONS[i]}], max_tokens=12, temperature=0
            )
            return r.choices[0].message.content

        assert [ask(i) for i in range(len(QUESTIONS))] == want
        assert concurrently(ask, len(QUESTIONS)) == want  # batched: prompts of different lengths padded together
    finally:
        srv.server.should_exit = True
        srv.thread.join(10)
