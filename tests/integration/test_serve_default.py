"""`efflm serve` on the default model, packed 4-bit, through the openai client: a chat answer, and
concurrent greedy completions equal to the same requests served alone."""

import pytest

from tests.serve.conftest import Running, concurrently

pytestmark = pytest.mark.integration


def test_default_model_serves_chat_and_concurrent_completions():
    recipe = [
        {"method": "rtn", "bits": 4, "group_size": 32},
        {"method": "int8_embeddings"},
        {"method": "dense", "dtype": "bfloat16"},
    ]
    s = Running("smollm2-135m", recipe=recipe, max_batch=4, max_len=512)
    try:
        assert s.batcher.engine.fast is not None, s.batcher.engine.fast_off  # the fused C step serves it
        c = s.client()
        r = c.chat.completions.create(
            model="smollm2-135m", messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=24, temperature=0,
        )  # fmt: skip
        assert r.choices[0].message.content.strip() and r.usage.completion_tokens >= 1
        prompts = ["The history of Rome", "def fibonacci(n):", "Water boils at", "My favourite book is"]
        solo = [c.completions.create(model="smollm2-135m", prompt=p, max_tokens=20, temperature=0).choices[0].text
                for p in prompts]  # fmt: skip
        got = concurrently(
            lambda i: (
                c.completions.create(model="smollm2-135m", prompt=prompts[i], max_tokens=20, temperature=0)
                .choices[0]
                .text
            ),
            len(prompts),
        )
        assert got == solo
    finally:
        s.stop()
