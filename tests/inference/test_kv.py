"""KV-cache methods: full budget equals the full cache, bounded memory, int8 error bound, bad budgets."""

import pytest
import torch

from efflm.core.errors import ConfigError, EfflmError
from efflm.inference.cache import kv_spec
from efflm.inference.engine import Engine
from efflm.inference.kv_int8 import quantize_int8
from efflm.methods import config_from_dict, get

TOL = 1e-5


def _with(model, **step):
    cfg = config_from_dict(step)
    return get(cfg.method).apply(model, cfg, None)


def _score(model, ids, total=None, prefill=8):
    e = Engine(model)
    cache = e.start(1, total or ids.shape[1])
    out = [e.feed(ids[:, :prefill], all_logits=True)] + [
        e.feed(ids[:, t : t + 1]) for t in range(prefill, ids.shape[1])
    ]
    return torch.cat(out, 1), cache


@pytest.fixture
def ids():
    return torch.randint(3, 259, (1, 48), generator=torch.Generator().manual_seed(4))


@pytest.mark.parametrize(
    "step",
    [
        {"method": "h2o", "budget": 1.0},
        {"method": "h2o", "budget": 48},
        {"method": "streaming_llm", "budget": 48, "sinks": 4},
    ],
)
def test_full_budget_equals_full_cache(tiny, ids, step):
    model, _ = tiny
    ref, _ = _score(model, ids)
    got, _ = _score(_with(model, **step), ids)
    assert (got - ref).abs().max() < TOL


@pytest.mark.parametrize(
    "step",
    [
        {"method": "h2o", "budget": 12},
        {"method": "streaming_llm", "budget": 12},
        {"method": "streaming_llm", "budget": 12, "sinks": 0},
    ],
)
def test_bounded_policies_evict_and_keep_constant_memory(tiny, ids, step):
    model, _ = tiny
    ref, full = _score(model, ids)
    got, cache = _score(_with(model, **step), ids)
    assert cache.size == 12 and cache.length == 12 and cache.nbytes() < full.nbytes() / 3
    assert torch.isfinite(got).all()
    assert (got[:, :12] - ref[:, :12]).abs().max() < TOL  # identical until the first eviction
    assert (got[:, 12:] - ref[:, 12:]).abs().max() > 1e-3  # then it really attends to fewer tokens


def test_h2o_keeps_heavy_hitters_and_recent_tokens(tiny):
    model, _ = tiny
    model = _with(model, method="h2o", budget=8, recent_ratio=0.5)
    e = Engine(model)
    cache = e.start(1, 40)
    ids = torch.randint(3, 259, (1, 30), generator=torch.Generator().manual_seed(5))
    e.feed(ids[:, :8])
    top_before = cache.score[0, 0].argmax(-1)  # each head's heaviest slot so far
    for t in range(8, 30):
        e.feed(ids[:, t : t + 1])
    born = cache.born[0, 0]
    assert (born >= 30 - 4).sum(-1).min() >= 4  # the 4 most recent tokens are all kept
    assert all(born[h, top_before[h]] < 8 for h in range(born.shape[0]))  # a heavy hitter survived 22 evictions


def test_streaming_cache_runs_past_the_model_context(tiny):
    model, _ = tiny
    model.config.max_position_embeddings = 32
    model = _with(model, method="streaming_llm", budget=16, sinks=2)
    ids = torch.randint(3, 259, (1, 80), generator=torch.Generator().manual_seed(6))
    logits, cache = _score(model, ids, total=80)
    assert torch.isfinite(logits).all() and cache.size == 16


def test_int8_kv_error_is_bounded(tiny, ids):
    x = torch.randn(2, 3, 10, 16) * 5
    q, s = quantize_int8(x)
    assert q.dtype == torch.int8 and ((q.float() * s.float() - x).abs() <= s.float() / 2 + 1e-6).all()
    model, _ = tiny
    ref, full = _score(model, ids)
    got, cache = _score(_with(model, method="kv_int8"), ids)
    err = (got - ref).abs().max() / ref.abs().max()
    assert 0 < err < 0.02
    assert cache.nbytes() < 0.3 * full.nbytes()  # int8 + fp16 scale per 16 vs fp32


def test_policy_is_saved_with_the_model(tiny, tmp_path):
    from efflm.io.load import load
    from efflm.io.save import save

    model, tok = tiny
    save(_with(model, method="streaming_llm", budget=64, sinks=4), tok, tmp_path / "m", "")
    back, _ = load(str(tmp_path / "m"))
    assert kv_spec(back) == {"method": "streaming_llm", "budget": 64, "sinks": 4}


def test_harness_perplexity_goes_through_the_cache(tiny):
    from efflm.eval.metrics import perplexity

    model, _ = tiny
    ids = torch.randint(3, 259, (128,), generator=torch.Generator().manual_seed(7))
    full = perplexity(model, ids, seq_len=64, n_windows=2)["ppl"]
    same = perplexity(_with(model, method="h2o", budget=1.0), ids, seq_len=64, n_windows=2)["ppl"]
    assert abs(same - full) < 1e-3 * full
    model2, _ = tiny
    small = perplexity(_with(model2, method="h2o", budget=0.2), ids, seq_len=64, n_windows=2)["ppl"]
    assert abs(small - full) > 1e-3 * full


def test_bad_kv_settings(tiny):
    with pytest.raises(ConfigError, match="smaller than sinks"):
        config_from_dict({"method": "streaming_llm", "budget": 4, "sinks": 4})
    with pytest.raises(ConfigError, match="budget"):
        config_from_dict({"method": "h2o", "budget": 0.0})
    with pytest.raises(ConfigError, match="budget"):
        config_from_dict({"method": "h2o", "budget": 10.5})
    model, _ = tiny
    _with(model, method="kv_int8")
    with pytest.raises(ConfigError, match="one KV-cache method"):
        _with(model, method="h2o")
    e = Engine(model)
    e.start(1, 8)
    with pytest.raises(EfflmError, match="KV cache full"):
        e.feed(torch.ones(1, 9, dtype=torch.long))


@pytest.mark.parametrize(
    "step", [{"method": "h2o", "budget": 12}, {"method": "streaming_llm", "budget": 12}, {"method": "kv_int8"}]
)
def test_policies_run_on_a_bf16_model(tiny, ids, step):
    model, _ = tiny
    model = _with(_with(model, method="dense", dtype="bfloat16"), **step)
    logits, cache = _score(model, ids)
    assert torch.isfinite(logits).all() and cache.length == min(cache.size, ids.shape[1])


def test_bounded_cache_never_exceeds_the_sequence(tiny, ids):
    model, _ = tiny
    _, cache = _score(_with(model, method="streaming_llm", budget=64), ids)
    assert cache.size == ids.shape[1] == 48
