"""Magnitude, Wanda and SparseGPT: exact sparsity and N:M on every matrix, reconstruction
quality on a layer with correlated inputs, bad settings, and the joint sparse + 4-bit recipe."""

import pytest
import torch

from efflm.calib.hessian import Hessian
from efflm.core.errors import ConfigError
from efflm.methods import check_for_model, config_from_dict, get
from efflm.models.arch import decoder_linears
from efflm.prune.masks import nm_mask, row_mask
from efflm.prune.sparsegpt import sparsegpt_prune
from efflm.prune.wanda import wanda_score

CALIB = torch.randint(3, 259, (4, 64), generator=torch.Generator().manual_seed(0))
PRUNERS = ["magnitude", "wanda", "sparsegpt"]


def _prune(tiny, name, **kw):
    model, _ = tiny
    cfg = config_from_dict({"method": name, **kw})
    check_for_model(model.config, cfg)
    return get(name).apply(model, cfg, CALIB), cfg


@pytest.mark.parametrize("name", PRUNERS)
@pytest.mark.parametrize("sparsity", [0.5, 0.3, 0.0])
def test_unstructured_sparsity_is_exact_on_every_matrix(tiny, name, sparsity):
    model, cfg = _prune(tiny, name, sparsity=sparsity)
    for path, lin in decoder_linears(model):
        zeros = lin.weight == 0
        out, cols = zeros.shape
        if name == "sparsegpt":  # round(s · rows · block) per 128-column block
            want = sum(round(out * min(128, cols - b) * sparsity) for b in range(0, cols, 128))
            assert int(zeros.sum()) == want, path
        else:  # int(s · in) in every output row
            assert (zeros.sum(dim=1) == int(cols * sparsity)).all(), path


@pytest.mark.parametrize("name", PRUNERS)
@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4"])
def test_nm_pattern_holds_in_every_run_of_every_matrix(tiny, name, pattern):
    n, m = map(int, pattern.split(":"))
    model, _ = _prune(tiny, name, sparsity=1 - n / m, pattern=pattern)
    for path, lin in decoder_linears(model):
        runs = (lin.weight != 0).reshape(lin.out_features, -1, m).sum(dim=-1)
        assert (runs == n).all(), path


def _layer(out=32, inp=128, tokens=1024, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = (torch.randn(tokens, inp, generator=g) @ (torch.randn(inp, inp, generator=g) / inp**0.5)) * torch.exp(
        torch.randn(inp, generator=g)
    )  # correlated inputs, uneven channel norms
    W = torch.randn(out, inp, generator=g)
    h = Hessian(inp)
    h.add(X)
    return W, X, h.H


def _err(W, Wp, X):
    return ((X @ (W - Wp).t()) ** 2).mean().item()


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.5), ("2:4", 0.5), ("unstructured", 0.7)])
def test_wanda_and_sparsegpt_reconstruct_better_than_magnitude(pattern, sparsity):
    from efflm.prune.masks import prune_mask

    W, X, H = _layer()
    mag = W.masked_fill(prune_mask(W.abs(), sparsity, pattern), 0)
    wanda = W.masked_fill(prune_mask(wanda_score(W, (X**2).sum(0)), sparsity, pattern), 0)
    sgpt, info = sparsegpt_prune(W, H, sparsity, pattern)
    assert "fallback" not in info
    e_mag, e_wanda, e_sgpt = _err(W, mag, X), _err(W, wanda, X), _err(W, sgpt, X)
    assert e_wanda < 0.5 * e_mag and e_sgpt < 0.5 * e_mag, (e_mag, e_wanda, e_sgpt)
    assert e_sgpt < e_wanda, (e_wanda, e_sgpt)  # the weight update helps beyond the mask


def test_masks_pick_the_smallest_scores():
    score = torch.tensor([[4.0, 1.0, 3.0, 2.0, 8.0, 5.0, 7.0, 6.0]])
    assert row_mask(score, 0.25).tolist() == [[False, True, False, True, False, False, False, False]]
    assert nm_mask(score, 2, 4).tolist() == [[False, True, False, True, False, True, False, True]]


def test_sparsegpt_falls_back_to_magnitude_when_cholesky_fails():
    W = torch.randn(8, 16)
    H = torch.full((16, 16), float("nan"))
    Wp, info = sparsegpt_prune(W, H, 0.5)
    assert info["fallback"] == "magnitude" and int((Wp == 0).sum()) == 64


@pytest.mark.parametrize(
    "step,pattern",
    [
        ({"method": "wanda", "sparsity": 1.0}, "sparsity must be in [0, 1)"),
        ({"method": "magnitude", "sparsity": -0.1}, "sparsity must be in [0, 1)"),
        ({"method": "sparsegpt", "pattern": "4:4"}, "need 0 < N < M"),
        ({"method": "wanda", "pattern": "6:4"}, "need 0 < N < M"),
        ({"method": "wanda", "pattern": "half"}, "'unstructured' or 'N:M'"),
        ({"method": "magnitude", "pattern": "1:4"}, "pattern 1:4 means sparsity 0.75"),
        ({"method": "sparsegpt", "pattern": "4:8", "sparsity": 0.5, "block_size": 100}, "multiple of M"),
    ],
)
def test_bad_sparsity_settings_are_refused(step, pattern):
    with pytest.raises(ConfigError, match=pattern.replace("[", r"\[").replace(")", r"\)")):
        config_from_dict(step)


def test_m_must_divide_every_input_width(tiny):
    cfg = config_from_dict({"method": "wanda", "pattern": "6:7", "sparsity": 1 - 6 / 7})
    with pytest.raises(ConfigError, match="M=7 does not divide"):
        check_for_model(tiny[0].config, cfg)


@pytest.mark.parametrize("pruner,quant", [("sparsegpt", "gptq"), ("wanda", "rtn")])
def test_joint_recipe_keeps_the_sparsity_through_4bit_quantization(tiny, pruner, quant):
    from efflm.eval.metrics import as_sparse_bytes, model_bytes

    model, _ = _prune(tiny, pruner, sparsity=0.5)
    masks = {p: lin.weight == 0 for p, lin in decoder_linears(model)}
    model = get(quant).apply(model, config_from_dict({"method": quant, "bits": 4, "group_size": 32}), CALIB)
    for path, lin in decoder_linears(model):
        w = lin.dequantize(torch.float32)
        assert (w[masks[path]] == 0).all(), path  # pruned stays pruned (kept ones may round to 0 too)
    assert as_sparse_bytes(model) < model_bytes(model)


def test_as_sparse_bytes_only_for_sparse_models(tiny):
    from efflm.eval.metrics import as_sparse_bytes, model_bytes

    model, _ = tiny
    assert as_sparse_bytes(model) is None
    before = model_bytes(model)
    model, _ = _prune((model, None), "magnitude", sparsity=0.5)
    linear_bytes = sum(lin.weight.numel() * 4 for _, lin in decoder_linears(model))
    # half the values go, a 1-bit mask comes: saved = bytes/2 − numel/8
    assert as_sparse_bytes(model) == before - linear_bytes // 2 + linear_bytes // 32


def test_as_sparse_bytes_ignores_zero_codes_of_plain_quantization(tiny):
    from efflm.eval.metrics import as_sparse_bytes

    model, _ = tiny
    model = get("rtn").apply(model, config_from_dict({"method": "rtn", "bits": 3, "group_size": 32}), None)
    assert as_sparse_bytes(model) is None  # 3-bit RTN rounds many weights to zero: not pruning
