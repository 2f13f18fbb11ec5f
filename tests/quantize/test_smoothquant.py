import copy

import pytest
import torch

from efflm.methods import config_from_dict, get
from efflm.nn.int8_linear import Int8Linear, int8_mm, quantize_rows
from efflm.quantize.scaling import fold_scales
from efflm.quantize.smoothquant import smoothing_scales


@pytest.mark.parametrize("k", [64, 1024, 1536, 2500])
def test_int8_mm_equals_torch_int_mm(k):
    g = torch.Generator().manual_seed(k)
    a = torch.randint(-127, 128, (9, k), dtype=torch.int8, generator=g)
    b = torch.randint(-127, 128, (20, k), dtype=torch.int8, generator=g)
    assert torch.equal(int8_mm(a, b), torch._int_mm(a, b.t().contiguous()))
    full_a, full_b = torch.full((2, k), 127, dtype=torch.int8), torch.full((3, k), -127, dtype=torch.int8)
    assert torch.equal(int8_mm(full_a, full_b), torch._int_mm(full_a, full_b.t().contiguous()))  # worst case


def test_int8_linear_error_is_small_and_stored_as_int8():
    lin = torch.nn.Linear(256, 64)
    x = torch.randn(5, 7, 256)
    q = Int8Linear.from_linear(lin)
    assert q.qweight.dtype == torch.int8 and q.qweight.abs().max() <= 127
    rel = (q(x) - lin(x)).norm() / lin(x).norm()
    assert rel < 0.02
    assert q(x.bfloat16()).dtype == torch.bfloat16
    codes, s = quantize_rows(lin.weight.data)
    torch.testing.assert_close(codes.float() * s[:, None], lin.weight.data, atol=s.max().item() / 2 + 1e-6, rtol=0)


def test_smoothing_scales_balance_activation_and_weight_ranges():
    act = torch.tensor([100.0, 1.0, 4.0])
    w = torch.tensor([[1.0, 1.0, 1.0]])
    s = smoothing_scales(act, [w], 0.5)
    torch.testing.assert_close(act / s, w.abs().amax(0) * s)  # α = 0.5: both ranges meet


def test_smoothing_is_equivalent_before_quantization(tiny, tiny_ids):
    tiny, _ = tiny
    ref = tiny(tiny_ids).logits
    layer = tiny.model.layers[1]
    s = smoothing_scales(torch.rand(64) * 10, [layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight], 0.5)
    fold_scales(layer.post_attention_layernorm, s)
    for lin in (layer.mlp.gate_proj, layer.mlp.up_proj):
        lin.weight.data.mul_(s)
    torch.testing.assert_close(tiny(tiny_ids).logits, ref, rtol=1e-4, atol=1e-4)


def test_smoothquant_beats_naive_w8a8_with_activation_outliers(tiny):
    tiny, _ = tiny
    # give the tiny model LLM-like outlier channels in every norm's output
    for layer in tiny.model.layers:
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            norm.weight.data[:3] *= 40
    calib = torch.randint(3, 259, (4, 64), generator=torch.Generator().manual_seed(0))
    ref = tiny(calib).logits
    naive = get("w8a8").apply(copy.deepcopy(tiny), config_from_dict({"method": "w8a8"}))
    smooth = get("smoothquant").apply(tiny, config_from_dict({"method": "smoothquant", "alpha": 0.5}), calib)
    assert isinstance(smooth.model.layers[0].mlp.down_proj, Int8Linear)
    err_naive = ((naive(calib).logits - ref) ** 2).mean()
    err_smooth = ((smooth(calib).logits - ref) ** 2).mean()
    assert err_smooth < 0.5 * err_naive
