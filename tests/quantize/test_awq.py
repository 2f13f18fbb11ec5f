import copy

import torch

from efflm.calib.hessian import Hessian
from efflm.methods import config_from_dict, get
from efflm.quantize import grid
from efflm.quantize.awq import output_error, scale_candidates, search_clip, search_scale
from efflm.quantize.scaling import fold_scales


def _layer(out=64, inp=128, tokens=4096, seed=0):
    g = torch.Generator().manual_seed(seed)
    scale = torch.ones(inp)
    scale[torch.randperm(inp, generator=g)[:4]] = 30.0  # a few outlier channels, as in LLMs
    X = torch.randn(tokens, inp, generator=g) * scale
    W = torch.randn(out, inp, generator=g) * 0.05
    h = Hessian(inp)
    h.add(X)
    return W, X, h


def test_output_error_is_the_calibration_output_error():
    W, X, h = _layer()
    dW = torch.randn_like(W) * 1e-2
    direct = ((X @ dW.t()) ** 2).sum() * 2 / X.shape[0]
    torch.testing.assert_close(output_error(dW, h.H), direct, rtol=1e-3, atol=0)


def test_observer_channel_statistics():
    X = torch.randn(50, 6)
    h = Hessian(6)
    h.add(X[:20])
    h.add(X[20:])
    torch.testing.assert_close(h.absmean, X.abs().mean(0))
    torch.testing.assert_close(h.absmax, X.abs().amax(0))


def test_scale_search_beats_rtn_on_outlier_channels():
    W, X, h = _layer()
    s, alpha = search_scale(W, h.H, h.absmean, 3, 32, True)
    assert alpha > 0  # the search moved away from plain RTN
    awq = grid.fake_quantize(W * s, 3, 32, True) / s
    plain = grid.fake_quantize(W, 3, 32, True)
    assert output_error(awq - W, h.H) < 0.7 * output_error(plain - W, h.H)
    c = scale_candidates(h.absmean, None, 0.5)
    torch.testing.assert_close((c.max() * c.min()).sqrt(), torch.tensor(1.0))


def test_clip_search_never_worse_than_no_clip_per_group():
    W, X, h = _layer()
    Wc = search_clip(W, h.H, 3, 32, True)
    assert (Wc.abs() <= W.abs() + 1e-7).all()
    assert (
        output_error(grid.fake_quantize(Wc, 3, 32, True) - W, h.H)
        <= output_error(grid.fake_quantize(W, 3, 32, True) - W, h.H) * 1.0001
    )


def test_folding_keeps_the_float_model_equal(tiny, tiny_ids):
    """AWQ equivalence before quantization: scales folded into norms / up_proj change nothing."""
    tiny, _ = tiny
    ref = tiny(tiny_ids).logits
    layer = tiny.model.layers[0]
    s = torch.rand(64) + 0.5
    fold_scales(layer.input_layernorm, s)
    for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
        lin.weight.data.mul_(s)
    s2 = torch.rand(128) + 0.5
    fold_scales(layer.mlp.up_proj, s2)
    layer.mlp.down_proj.weight.data.mul_(s2)
    torch.testing.assert_close(tiny(tiny_ids).logits, ref, rtol=1e-4, atol=1e-4)


def test_awq_apply_beats_rtn_on_tiny_model(tiny, tiny_ids):
    tiny, _ = tiny
    calib = torch.randint(3, 259, (4, 64), generator=torch.Generator().manual_seed(0))
    ref = tiny(calib).logits
    rtn_model = get("rtn").apply(copy.deepcopy(tiny), config_from_dict({"method": "rtn", "bits": 3, "group_size": 32}))
    awq_model = get("awq").apply(tiny, config_from_dict({"method": "awq", "bits": 3, "group_size": 32}), calib)
    err_rtn = ((rtn_model(calib).logits - ref) ** 2).mean()
    err_awq = ((awq_model(calib).logits - ref) ** 2).mean()
    assert err_awq < err_rtn


def test_coarse_to_fine_search_finds_the_full_grid_optimum():
    W, X, h = _layer(seed=3)
    s, alpha = search_scale(W, h.H, h.absmean, 3, 32, True, n_grid=20)
    errs = [
        output_error(grid.fake_quantize(W * c, 3, 32, True) / c - W, h.H).item()
        for c in (scale_candidates(h.absmean, None, i / 20) for i in range(20))
    ]
    assert alpha == errs.index(min(errs)) / 20
