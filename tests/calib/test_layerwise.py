"""The layer-by-layer runner: its two orders, and what each forward computes."""

import pytest
import torch

from efflm.calib.hessian import Hessian
from efflm.calib.layerwise import run
from efflm.methods import config_from_dict, get
from efflm.nn.quant_linear import QuantLinear


def _zero_qkv(model, log):
    def solve(i, layer, observers):
        log.append((i, sorted(observers)))
        for path in observers:
            if path.endswith(("q_proj", "k_proj", "v_proj")):
                model.get_submodule(path).weight.data.zero_()

    return solve


@pytest.mark.parametrize("one_pass", [True, False])
def test_one_pass_solves_each_group_before_the_forward_reaches_the_next(tiny, one_pass):
    model, _ = tiny
    seen, log = {}, []

    def observe(path, linear):
        seen[path] = Hessian(linear.in_features, stats=False)
        return seen[path]

    run(model, torch.randint(3, 259, (3, 16)), observe, _zero_qkv(model, log), one_pass=one_pass)
    o_input = seen["model.layers.0.self_attn.o_proj"].H
    if one_pass:  # o_proj saw the output of the already zeroed v_proj
        assert torch.equal(o_input, torch.zeros_like(o_input))
        assert [paths for i, paths in log if i == 0][0] == sorted(f"model.layers.0.self_attn.{p}_proj" for p in "qkv")
        assert len(log) == 4 * len(model.model.layers)  # one solve per input group
    else:  # the whole layer was observed with its original weights, then solved at once
        assert o_input.abs().sum() > 0
        assert len(log) == len(model.model.layers)


def test_two_pass_observation_stops_before_the_last_linear(tiny):
    model, _ = tiny
    calls = []
    down = model.model.layers[0].mlp.down_proj
    down.register_forward_hook(lambda m, a, y: calls.append(a[0].shape[0]))
    calib = torch.randint(3, 259, (6, 16))
    run(model, calib, lambda p, lin: Hessian(lin.in_features), lambda i, layer, obs: None, batch_size=4)
    assert calls == [4, 2]  # only the output forward (batches of 4 and 2) ran it


@pytest.mark.parametrize("method", ["gptq", "sparsegpt"])
def test_true_sequential_and_layer_order_both_compress_every_linear(tiny, method):
    calib = torch.randint(3, 259, (4, 32), generator=torch.Generator().manual_seed(0))
    base = {"method": "gptq", "bits": 4, "group_size": 32} if method == "gptq" else {"method": method, "sparsity": 0.5}
    out = {}
    for ts in (True, False):
        from efflm.io.load import load

        model, _ = load("tiny-llama")
        model = get(method).apply(model, config_from_dict({**base, "true_sequential": ts}), calib)
        lin = model.model.layers[1].self_attn.o_proj
        out[ts] = lin.dequantize() if method == "gptq" else lin.weight.data
        if method == "gptq":
            assert all(isinstance(m, QuantLinear) for n, m in model.named_modules() if n.endswith("proj"))
        else:
            assert (lin.weight == 0).float().mean() == pytest.approx(0.5, abs=0.01)
    assert not torch.equal(out[True], out[False])  # o_proj saw different inputs in the two orders
