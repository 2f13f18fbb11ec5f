"""The fused C decode step on the default model against the engine's reference path."""

import pytest
import torch

from efflm.inference.engine import Engine
from efflm.methods import config_from_dict, get
from efflm.nn import q4_kernel

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not q4_kernel.available(), reason="efflm's C kernels do not build here"),
]


def _greedy(model, ids, new, fast):
    e = Engine(model, fast=fast)
    e.start(ids.shape[0], ids.shape[1] + new)
    logits, out = e.feed(ids), []
    for _ in range(new):
        t = logits[:, -1].argmax(-1, keepdim=True)
        out.append(t)
        logits = e.feed(t)
    assert (e.fast is not None) == fast, e.fast_off
    return torch.cat(out, 1)


def test_fp32_fast_step_equals_reference_for_64_tokens(smol):
    model, _, ids = smol
    prompts = torch.stack([ids[:32], ids[100:132]])  # two rows of real text, batched
    assert torch.equal(_greedy(model, prompts, 64, fast=True), _greedy(model, prompts, 64, fast=False))


def test_packed_4bit_fast_step_follows_reference_logits(smol):
    """bf16 packed 4-bit: the same roundings as the reference path, summation order aside; fed the
    same tokens, each step's logits agree to bf16 noise and the argmax almost always."""
    model, _, ids = smol
    import copy

    w4 = copy.deepcopy(model)
    for step in ({"method": "rtn", "bits": 4, "group_size": 32}, {"method": "int8_embeddings"},
                 {"method": "dense", "dtype": "bfloat16"}):  # fmt: skip
        cfg = config_from_dict(step)
        w4 = get(cfg.method).apply(w4, cfg, None)
    prompt, follow = ids[:32].reshape(1, -1), ids[32:96].reshape(1, -1)
    got = []
    for fast in (False, True):
        e = Engine(w4, fast=fast)
        e.start(1, 96)
        e.feed(prompt)
        got.append(torch.cat([e.feed(follow[:, t : t + 1]) for t in range(64)], 1))
    ref, fast = got
    assert ((fast - ref).abs().amax(-1) / ref.abs().amax(-1)).max() < 0.05
    assert (fast.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.95
