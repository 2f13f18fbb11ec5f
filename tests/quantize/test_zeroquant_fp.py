import pytest
import torch

from efflm.core.errors import ConfigError
from efflm.methods import config_from_dict, get
from efflm.nn import fp_formats
from efflm.nn.fp_linear import FPLinear
from efflm.quantize import grid


def test_e2m1_codes_are_the_sixteen_fp4_values():
    codes = torch.arange(16, dtype=torch.uint8)
    values = fp_formats.decode(codes, "e2m1")
    assert sorted(set(values.abs().tolist())) == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    nonzero = values != 0
    assert torch.equal(fp_formats.decode(fp_formats.encode(values, "e2m1"), "e2m1")[nonzero], values[nonzero])
    x = torch.tensor([0.2, 0.3, 1.2, 1.3, 2.6, 4.9, 5.1, 100.0, -100.0, -2.4])
    want = torch.tensor([0.0, 0.5, 1.0, 1.5, 3.0, 4.0, 6.0, 6.0, -6.0, -2.0])
    assert torch.equal(fp_formats.round_to(x, "e2m1"), want)  # nearest, saturating


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_fp8_codes_round_trip_every_finite_value(fmt):
    codes = torch.arange(256, dtype=torch.uint8)
    values = fp_formats.decode(codes, fmt)
    finite = torch.isfinite(values)
    assert torch.equal(fp_formats.decode(fp_formats.encode(values[finite], fmt), fmt), values[finite])
    big = torch.tensor([1e9, -1e9])
    assert torch.equal(fp_formats.round_to(big, fmt), torch.tensor([fp_formats.MAX[fmt], -fp_formats.MAX[fmt]]))


def heavy_tailed_layer():
    torch.manual_seed(0)
    lin = torch.nn.Linear(512, 256, bias=False)
    lin.weight.data = torch.distributions.StudentT(3.0).sample((256, 512)) * 0.02
    x = torch.randn(64, 512) @ (torch.eye(512) + 0.3 * torch.randn(512, 512) / 512**0.5)  # correlated inputs
    return lin, x


def out_err(w, lin, x):
    return ((x @ (w - lin.weight.data).t()).norm() / lin(x).norm()).item()


def test_fp4_weights_beat_int4_rtn_on_heavy_tailed_weights_at_the_same_bits():
    lin, x = heavy_tailed_layer()
    fp4 = FPLinear.from_linear(lin, "e2m1", 64)
    int4 = grid.fake_quantize(lin.weight.data, 4, 64, symmetric=True)  # same bits: 4 + 16/64
    assert out_err(fp4.dequantize(), lin, x) < 0.9 * out_err(int4, lin, x)


def test_fp8_activations_beat_int8_activations_with_outlier_features():
    lin, x = heavy_tailed_layer()
    x[:, :4] *= 50
    m = FPLinear.from_linear(lin, "e4m3", 64, act_format="e4m3")
    fp8 = m.quantize_input(x)
    s = x.abs().amax(dim=-1, keepdim=True) / 127
    int8 = torch.round(x / s) * s
    err = lambda xq: ((xq - x)[:, 4:].norm() / x[:, 4:].norm()).item()  # noqa: E731 (the ordinary features)
    assert err(fp8) < 0.5 * err(int8)


@pytest.mark.parametrize("fmt,bits", [("e2m1", 4), ("e4m3", 8), ("e5m2", 8)])
def test_stored_bytes_are_the_codes_plus_fp16_scales(fmt, bits):
    lin, x = heavy_tailed_layer()
    m = FPLinear.from_linear(lin, fmt, 64)
    stored = sum(b.numel() * b.element_size() for b in m.buffers())
    assert stored == 256 * 512 * bits // 8 + 256 * (512 // 64) * 2
    back = FPLinear.from_spec(m.spec())
    back.load_state_dict(m.state_dict())
    assert torch.equal(back(x), m(x))


def test_pow2_scales_are_powers_of_two():
    lin, _ = heavy_tailed_layer()
    s = FPLinear.from_linear(lin, "e2m1", 64, pow2=True).scales.float()
    assert torch.equal(torch.exp2(torch.log2(s).round()), s)


def test_w4a8_on_tiny_llama_stores_fp_linears(tiny, tiny_ids):
    model, _ = tiny
    ref = model(tiny_ids).logits
    out = get("zeroquant_fp").apply(model, config_from_dict({"method": "zeroquant_fp"}))
    down = out.model.layers[0].mlp.down_proj
    assert isinstance(down, FPLinear) and down.weight_format == "e2m1" and down.act_format == "e4m3"
    assert ((out(tiny_ids).logits - ref).norm() / ref.norm()) < 0.3


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"weight_format": "e3m2"}, "weight_format"),
        ({"act_format": "int8"}, "act_format"),
        ({"group_size": 0}, "group_size"),
    ],
)
def test_bad_config(bad, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict({"method": "zeroquant_fp", **bad})
