import pytest
import torch

from efflm.calib.hessian import Hessian, inverse_cholesky
from efflm.methods import config_from_dict, get
from efflm.quantize import grid
from efflm.quantize.ldlq import gptq_quantize


def _layer(out=48, inp=128, tokens=2048, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(inp, inp, generator=g) / inp**0.5  # correlated inputs, as in real activations
    scale = torch.exp(torch.randn(inp, generator=g))  # and uneven channel magnitudes
    X = (torch.randn(tokens, inp, generator=g) @ mix) * scale
    W = torch.randn(out, inp, generator=g) * 0.05
    h = Hessian(inp)
    h.add(X)
    return W, X, h.H


def _err(W, Wq, X):
    return ((X @ W.t() - X @ Wq.t()) ** 2).mean().item()


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_output_error_below_rtn(bits, symmetric, act_order):
    W, X, H = _layer()
    codes, scales, offsets, info = gptq_quantize(W, H, bits, 32, symmetric, act_order)
    assert "fallback" not in info
    Wq = grid.dequantize(codes, scales, offsets, bits, 32)
    W_rtn = grid.fake_quantize(W, bits, 32, symmetric)
    assert _err(W, Wq, X) < 0.8 * _err(W, W_rtn, X)
    assert codes.max() < 2**bits
    # the result lies on its own grid: re-quantizing with the stored scales changes nothing
    assert torch.equal(grid.quantize(Wq, scales, offsets, bits, 32), codes)


def test_hessian_is_running_mean_of_2xxT():
    X = torch.randn(100, 8)
    h = Hessian(8)
    h.add(X[:30])
    h.add(X[30:])
    torch.testing.assert_close(h.H, 2 * X.t() @ X / 100, rtol=1e-5, atol=1e-5)


def test_cholesky_failure_raises_damping_then_falls_back_to_rtn():
    W, _, H = _layer(out=8, inp=32)
    U, lam = inverse_cholesky(H, 0.01)
    assert U is not None and lam == 0.01
    bad = H.clone()
    bad[0, 0] = float("nan")
    codes, scales, offsets, info = gptq_quantize(W, bad, 4, 32, True)
    assert info["fallback"] == "rtn"
    assert torch.equal(grid.dequantize(codes, scales, offsets, 4, 32), grid.fake_quantize(W, 4, 32, True))


@pytest.mark.parametrize("act_order", [False, True])
def test_a_consumed_hessian_gives_the_same_codes_and_is_freed(act_order):
    """consume=True (GPTQ's path, Hessian.take()) overwrites and frees H but quantizes bit for bit as
    the copying path does, dead input columns included."""
    W, _, H = _layer(out=16, inp=64)
    H[5, :], H[:, 5] = 0, 0  # an input that never fired
    kept = gptq_quantize(W, H.clone(), 4, 32, True, act_order)
    given = H.clone()
    took = gptq_quantize(W, given, 4, 32, True, act_order, consume=True)
    assert torch.equal(kept[0], took[0]) and torch.equal(kept[1], took[1]) and took[2] is None
    assert given.untyped_storage().nbytes() == 0


def test_consumed_inverse_cholesky_retries_from_the_undampened_diagonal():
    """A factorization that fails at the first damping is retried at 10x from H's own diagonal, so
    the in-place path gives the copying path's factor and damping."""
    g = torch.Generator().manual_seed(1)
    A = torch.randn(24, 24, generator=g)
    H = A @ A.t() - torch.eye(24)  # smallest eigenvalue about -1: λ = 0.01 · mean diag is not enough
    U0, lam0 = inverse_cholesky(H, 0.01)
    U1, lam1 = inverse_cholesky(H.clone(), 0.01, consume=True)
    assert lam0 == lam1 == 0.1  # the first damping failed
    assert torch.equal(U0, U1)


def test_hessian_take_hands_over_once():
    h = Hessian(4)
    h.add(torch.randn(3, 4))
    H = h.take()
    assert H.shape == (4, 4) and h.H is None
    with pytest.raises(RuntimeError):
        h.take()


def test_gptq_apply_rejects_missing_calibration_and_non_finite_activations(tiny):
    from efflm.core.errors import EfflmError

    model, _ = tiny
    cfg = config_from_dict({"method": "gptq", "bits": 4, "group_size": 32})
    with pytest.raises(EfflmError, match="needs calibration data"):
        get("gptq").apply(model, cfg, None)
    with torch.no_grad():
        model.model.layers[0].post_attention_layernorm.weight[:] = float("nan")
    calib = torch.randint(3, 259, (2, 32))
    with pytest.raises(
        EfflmError, match="NaN or inf in the calibration activations entering model.layers.0.mlp.gate_proj"
    ):
        get("gptq").apply(model, cfg, calib)
