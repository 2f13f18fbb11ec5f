import copy

import pytest
import torch

from efflm.core.errors import ConfigError
from efflm.methods import config_from_dict, get
from efflm.nn.int8_linear import Int8Linear


def layer_and_inputs(outlier_cols=(3, 17), scale=60.0):
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(256, 128, bias=True)
    x = torch.randn(2, 9, 256, generator=g)
    x[..., list(outlier_cols)] *= scale  # systematic outlier feature dimensions, as in the paper
    return lin, x


def rel(y, ref):
    return ((y - ref).norm() / ref.norm()).item()


def test_mixed_precision_decomposition_removes_the_outlier_error():
    lin, x = layer_and_inputs()
    ref = lin(x)
    naive = Int8Linear.from_linear(lin)
    mixed = Int8Linear.from_linear(lin, outlier_threshold=6.0)
    assert torch.equal(mixed.qweight, naive.qweight)  # the same stored int8 weights
    assert rel(mixed(x), ref) < 0.01
    assert rel(mixed(x), ref) < 0.25 * rel(naive(x), ref)


def test_without_outliers_it_is_the_int8_product_exactly():
    lin, x = layer_and_inputs(scale=1.0)
    assert x.abs().max() < 6.0
    assert torch.equal(Int8Linear.from_linear(lin, outlier_threshold=6.0)(x), Int8Linear.from_linear(lin)(x))


def test_outlier_columns_use_the_dequantized_int8_weights():
    lin, x = layer_and_inputs()
    m = Int8Linear.from_linear(lin, outlier_threshold=6.0)
    cols = [3, 17]
    w = m.qweight.float() * m.wscale[:, None]
    x2 = x.reshape(-1, 256)
    inner = x2.clone()
    inner[:, cols] = 0
    ref_int8 = Int8Linear.from_linear(lin)(inner.reshape(x.shape)) - lin.bias
    expected = ref_int8.reshape(-1, 128) + x2[:, cols] @ w[:, cols].t() + lin.bias
    torch.testing.assert_close(m(x).reshape(-1, 128), expected, rtol=1e-5, atol=1e-5)


def test_llm_int8_beats_naive_w8a8_on_a_model_with_outlier_features(tiny):
    tiny, _ = tiny
    tiny = copy.deepcopy(tiny)
    for layer in tiny.model.layers:  # LLM-like outlier dimensions in every norm's output
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            norm.weight.data[:3] *= 40
    ids = torch.randint(3, 259, (2, 32), generator=torch.Generator().manual_seed(0))
    ref = tiny(ids).logits
    naive = get("w8a8").apply(copy.deepcopy(tiny), config_from_dict({"method": "w8a8"}))
    mixed = get("llm_int8").apply(tiny, config_from_dict({"method": "llm_int8"}))
    assert mixed.model.layers[0].mlp.down_proj.outlier_threshold == 6.0
    assert ((mixed(ids).logits - ref) ** 2).mean() < 0.25 * ((naive(ids).logits - ref) ** 2).mean()


def test_threshold_round_trips_through_the_spec():
    lin, _ = layer_and_inputs()
    m = Int8Linear.from_linear(lin, outlier_threshold=4.5)
    assert Int8Linear.from_spec(m.spec()).outlier_threshold == 4.5
    assert "outlier_threshold" not in Int8Linear.from_linear(lin).spec()  # W8A8 files unchanged


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_bad_threshold(bad):
    with pytest.raises(ConfigError, match="threshold"):
        config_from_dict({"method": "llm_int8", "threshold": bad})
