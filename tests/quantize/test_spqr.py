import pytest
import torch

from efflm.core.errors import ConfigError
from efflm.methods import config_from_dict, get
from efflm.nn.spqr_linear import SpQRLinear
from efflm.quantize import grid
from efflm.quantize.ldlq import gptq_quantize
from efflm.quantize.spqr import quantize_stats, robust_grid, spqr_quantize


def layer():
    """Correlated inputs; weights with a few large entries (the outliers SpQR keeps)."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(128, 256, generator=g) * 0.02
    W.view(-1)[torch.randperm(W.numel(), generator=g)[:100]] *= 20
    X = torch.randn(1024, 256, generator=g) @ (torch.eye(256) + 0.5 * torch.randn(256, 256, generator=g) / 16)
    return W, X, 2 * X.t() @ X / X.shape[0]


def out_err(v, W, X):
    return ((X @ (v - W).t()).norm() / (X @ W.t()).norm()).item()


def module(W, parts, bits=3):
    m = SpQRLinear(W.shape[1], W.shape[0], bits, 16, 3, 16, int((parts["sparse"].half() != 0).sum()))
    m.set_parts(
        *(parts[k] for k in ("codes", "perm", "scale_codes", "scale_stats", "zero_codes", "zero_stats", "sparse"))
    )
    return m


def test_spqr_beats_gptq_at_the_same_bits_and_the_module_decodes_the_solution():
    W, X, H = layer()
    parts, dq, info = spqr_quantize(W, H, 3, 16, 3, 16, tau=0.2)
    m = module(W, parts)
    torch.testing.assert_close(m.dequantize(), dq, rtol=0, atol=1e-6)  # stored = what the sweep used
    assert 0 < info["outliers"] < 0.03 * W.numel()
    bpw = m.bits_per_weight()
    c, s, o, _ = gptq_quantize(W, H, 4, 64, False, act_order=True)  # 4 + 32/64 = 4.5 bits: more than SpQR's
    assert bpw < 4.5
    assert out_err(dq, W, X) < 0.75 * out_err(grid.dequantize(c, s, o, 4, 64), W, X)
    x = X[:3]
    torch.testing.assert_close(m(x), x @ dq.t(), rtol=1e-4, atol=1e-4)


def test_outliers_help_and_are_counted_in_the_bits():
    W, X, H = layer()
    with_o, dq_o, _ = spqr_quantize(W, H, 3, 16, 3, 16, tau=0.2)
    without, dq_n, info = spqr_quantize(W, H, 3, 16, 3, 16, tau=None)
    assert info["outliers"] == 0
    assert out_err(dq_o, W, X) < 0.8 * out_err(dq_n, W, X)
    a, b = module(W, with_o), module(W, without)
    extra = 8 * (a.sp_rows.numel() * 4 + a.nnz * 4) / W.numel()  # int32 row pointers, int16 column + fp16 value
    assert a.bits_per_weight() == pytest.approx(b.bits_per_weight() + extra)
    base = 3 + 2 * 3 / 16 + 2 * 2 * 16 / (16 * 16) + 16 / 128  # codes, 3-bit stats, their fp16 stats, perm
    assert b.bits_per_weight() == pytest.approx(base)


def test_robust_grid_ignores_a_planted_outlier():
    G = torch.linspace(-1, 1, 16).repeat(4, 1)
    G[:, 5] = 40.0
    s, z = robust_grid(G, torch.ones(16), 7, thr=1.0)
    assert (s * 7 < 3).all()  # the range is the ordinary weights', not stretched to 40


def test_second_level_stats_round_trip():
    v = torch.rand(64) * 0.1 + 0.01
    codes, stats, values = quantize_stats(v, 3, 16)
    assert codes.max() <= 7 and stats.shape == (4, 2)
    assert (values - v).abs().max() <= stats[:, 0].float().max() / 2 + 1e-6


def test_spqr_on_tiny_llama(tiny, tiny_ids):
    model, _ = tiny
    calib = torch.randint(3, 259, (4, 32), generator=torch.Generator().manual_seed(0))
    ref = model(tiny_ids).logits
    out = get("spqr").apply(model, config_from_dict({"method": "spqr", "bits": 4}), calib)
    assert isinstance(out.model.layers[0].mlp.down_proj, SpQRLinear)
    assert ((out(tiny_ids).logits - ref).norm() / ref.norm()) < 0.2


@pytest.mark.parametrize(
    "bad,match",
    [({"bits": 1}, "bits"), ({"group_size": 0}, "group_size"), ({"outlier_threshold": 0}, "outlier_threshold"),
     ({"block_size": 100}, "multiple")],
)  # fmt: skip
def test_bad_config(bad, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict({"method": "spqr", **bad})
