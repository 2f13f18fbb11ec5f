import copy

import pytest
import torch

from efflm.core.errors import ConfigError
from efflm.methods import config_from_dict, get
from efflm.nn.act_quant_linear import ActQuantLinear, quantize_tokens
from efflm.nn.quant_linear import QuantLinear
from efflm.quantize.fake_quant import FakeQuantLinear


def test_token_wise_quantization_has_one_scale_per_token():
    x = torch.tensor([[0.1, -0.2, 0.05], [100.0, 3.0, -50.0]])
    q = quantize_tokens(x, 8)
    torch.testing.assert_close(q[0], x[0], atol=0.2 / 127 / 2 + 1e-7, rtol=0)  # the small token keeps its precision
    assert q.abs().amax(dim=-1).tolist() == pytest.approx(x.abs().amax(dim=-1).tolist())


def test_act_quant_linear_is_the_weight_grid_on_quantized_inputs():
    lin = torch.nn.Linear(64, 32)
    m = ActQuantLinear(64, 32, 4, 32, True, bias=True, act_bits=8)
    ref = QuantLinear(64, 32, 4, 32, True, bias=True)
    from efflm.quantize import grid

    s, o = grid.grid(lin.weight.data, 4, 32, True)
    codes = grid.quantize(lin.weight.data, s, o, 4, 32)
    for mod in (m, ref):
        mod.set_codes(codes, s, o)
        mod.bias.data.copy_(lin.bias.data)
    x = torch.randn(3, 64)
    torch.testing.assert_close(m(x), ref(quantize_tokens(x, 8)))
    assert not torch.equal(m(x), ref(x))
    back = ActQuantLinear.from_spec(m.spec())
    back.load_state_dict(m.state_dict())
    assert back.act_bits == 8 and torch.equal(back(x), m(x))


def layer_error(model, ref_model, ids):
    """Relative error of the first decoder layer's output against the original's, same input."""
    h = ref_model.model.embed_tokens(ids)
    pos = torch.arange(ids.shape[1])[None]
    emb = ref_model.model.rotary_emb(h, pos)
    a = ref_model.model.layers[0](h, position_embeddings=emb)
    b = model.model.layers[0](h, position_embeddings=emb)
    a, b = (x[0] if isinstance(x, tuple) else x for x in (a, b))
    return ((a - b).norm() / a.norm()).item()


def test_layer_by_layer_distillation_lowers_the_layer_error(tiny):
    model, _ = tiny
    calib = torch.randint(3, 259, (16, 32), generator=torch.Generator().manual_seed(0))
    cfg = {"method": "zeroquant", "bits": 3, "group_size": 32, "act_bits": 8}
    plain = get("zeroquant").apply(copy.deepcopy(model), config_from_dict({**cfg, "lkd_steps": 0}), calib)
    lkd = get("zeroquant").apply(
        copy.deepcopy(model), config_from_dict({**cfg, "lkd_steps": 60, "lkd_lr": 1e-4}), calib
    )
    assert isinstance(lkd.model.layers[0].mlp.down_proj, ActQuantLinear)
    assert all(p.requires_grad == q.requires_grad for p, q in zip(model.parameters(), lkd.parameters()))
    held = torch.randint(3, 259, (2, 32), generator=torch.Generator().manual_seed(1))
    assert layer_error(lkd, model, held) < 0.9 * layer_error(plain, model, held)  # on tokens it never saw


def test_weight_only_zeroquant_packs_plain_quant_linears(tiny, tiny_ids):
    model, _ = tiny
    calib = torch.randint(3, 259, (4, 32), generator=torch.Generator().manual_seed(0))
    out = get("zeroquant").apply(model, config_from_dict({"method": "zeroquant", "act_bits": 0, "lkd_steps": 2}), calib)
    assert type(out.model.layers[0].self_attn.q_proj) is QuantLinear


def test_fake_quant_linear_passes_gradients_straight_through():
    from efflm.quantize.grid import fake_quantize

    lin = torch.nn.Linear(64, 8, bias=False)
    f = FakeQuantLinear(lin, 3, 32, True, act_bits=8)
    x = torch.randn(4, 64, requires_grad=True)
    y = f(x)
    wq, xq = fake_quantize(lin.weight.data, 3, 32, True), quantize_tokens(x.detach(), 8)
    torch.testing.assert_close(y, xq @ wq.t())  # the forward computes with both rounded
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(4, 8) @ wq)  # the roundings pass gradients as identity
    torch.testing.assert_close(lin.weight.grad, torch.ones(8, 4) @ xq)


@pytest.mark.parametrize(
    "bad,match", [({"act_bits": 1}, "act_bits"), ({"lkd_steps": -1}, "lkd_steps"), ({"lkd_lr": 0}, "lkd_lr")]
)
def test_bad_config(bad, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict({"method": "zeroquant", **bad})
