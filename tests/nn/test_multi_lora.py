"""Many LoRA adapters over one base, picked per row: each row equals its adapter applied alone."""

import pytest
import torch

from efflm.core.errors import EfflmError
from efflm.nn.adapters import LoraLinear
from efflm.nn.multi_lora import MultiLoraLinear, Routing, routing_of, wrap, wrappers


def _lora(base, seed):
    lora = LoraLinear(base, r=3, alpha=6.0, seed=seed)
    with torch.no_grad():
        lora.lora_B.weight.normal_(generator=torch.Generator().manual_seed(seed))
    return lora


def test_each_row_equals_its_adapter_alone():
    torch.manual_seed(0)
    base = torch.nn.Linear(16, 8)
    a, b = _lora(base, 1), _lora(base, 2)
    routing = Routing()
    multi = MultiLoraLinear(base, routing)
    for name, lora in (("a", a), ("b", b)):
        multi.add(name, *lora.factors(), lora.scaling)
    x = torch.randn(4, 5, 16)
    routing.rows = ["a", None, "b", "a"]
    with torch.no_grad():
        got = multi(x)
        want = torch.stack([a(x[0]), base(x[1]), b(x[2]), a(x[3])])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert not torch.allclose(got[0], base(x[0]), atol=1e-3)  # the adapter acts
    routing.rows = ["b"] * 4  # every row one adapter: one product, no gather
    with torch.no_grad():
        torch.testing.assert_close(multi(x), b(x), atol=1e-5, rtol=0)
    routing.rows = None
    with torch.no_grad():
        torch.testing.assert_close(multi(x), base(x))
    multi.remove("a")
    routing.rows = ["a", None, "b", "a"]  # an adapter gone (or not adapting this Linear) adds nothing
    with torch.no_grad():
        torch.testing.assert_close(multi(x)[0], base(x[0]))
    routing.rows = ["b", None]
    with pytest.raises(EfflmError, match="routing names 2 rows for a batch of 4"):
        multi(x)


def test_factors_must_fit():
    multi = MultiLoraLinear(torch.nn.Linear(16, 8), Routing())
    with pytest.raises(EfflmError, match="do not fit"):
        multi.add("x", torch.zeros(3, 15), torch.zeros(8, 3), 1.0)


def test_wrap_shares_one_routing_and_is_idempotent(tiny):
    import copy

    model, _ = tiny
    model = copy.deepcopy(model)
    paths = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
    routing = wrap(model, paths)
    assert wrap(model, paths) is routing is routing_of(model)
    assert sorted(wrappers(model)) == sorted(paths)
    assert all(m.routing is routing for m in wrappers(model).values())
    with pytest.raises(EfflmError, match="not a Linear"):
        wrap(model, ["model.layers.0.input_layernorm"])


def test_the_fused_step_serves_base_rows_and_leaves_adapter_rows_to_torch(tiny):
    import copy

    from efflm.inference.engine import Engine
    from efflm.serve.adapters import targets

    model, _ = tiny
    plain = Engine(model)
    if plain.fast is None:
        pytest.skip(f"no fused step here: {plain.fast_off}")
    model = copy.deepcopy(model)
    routing = wrap(model, targets(model))
    e = Engine(model)
    assert e.fast is not None, e.fast_off
    cache = e.start(2, 16)
    routing.rows = [None, None]
    assert e.fast.takes(2, cache)
    routing.rows = [None, "a"]
    assert not e.fast.takes(2, cache)


def test_factors_live_where_the_base_does():
    base = torch.nn.Linear(16, 8, device="meta")
    multi = MultiLoraLinear(base, Routing())
    multi.add("a", torch.randn(3, 16), torch.randn(8, 3), 2.0)
    assert all(t.device.type == "meta" for t in multi.loras["a"][:2])
    multi.routing.rows = ["a", None]
    assert multi(torch.randn(2, 16, device="meta")).shape == (2, 8)
