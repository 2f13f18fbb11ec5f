import pytest
import torch

from efflm.core.errors import ConfigError
from efflm.methods import config_from_dict, get
from efflm.nn import incoherence
from efflm.nn.incoherent_linear import IncoherentLinear
from efflm.quantize import grid
from efflm.quantize.ldlq import gptq_quantize


def transform(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return incoherence.random_signs(n, g), incoherence.random_orthogonal(incoherence.split(n)[1], g)


@pytest.mark.parametrize("n,h", [(576, 64), (1536, 512), (64, 64), (9, 1)])
def test_transforms_are_orthogonal_for_every_size(n, h):
    assert incoherence.split(n)[0] == h  # 9: no factor of two — a plain random orthogonal matrix
    s, q = transform(n)
    M = incoherence.mix(torch.eye(n) * s.float(), q)  # rows: M (s ⊙ e_i)
    torch.testing.assert_close(M @ M.t(), torch.eye(n), atol=1e-5, rtol=0)


def test_rotation_round_trips_and_rotates_the_hessian_consistently():
    g = torch.Generator().manual_seed(1)
    W, X = torch.randn(96, 576, generator=g), torch.randn(300, 576, generator=g)
    s_out, q_out = transform(96, 2)
    s_in, q_in = transform(576, 3)
    R = incoherence.rotate_weight(W, s_out, q_out, s_in, q_in)
    torch.testing.assert_close(incoherence.unrotate_weight(R, s_out, q_out, s_in, q_in), W, atol=1e-4, rtol=0)
    Xr = incoherence.mix(X * s_in.float(), q_in)  # the inputs the rotated weight sees
    U_t = incoherence.mix(torch.eye(96) * s_out.float(), q_out)  # diag(s) Mᵀ = Uᵀ
    torch.testing.assert_close(Xr @ R.t(), (X @ W.t()) @ U_t, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(incoherence.rotate_hessian(X.t() @ X, s_in, q_in), Xr.t() @ Xr, rtol=1e-4, atol=1e-2)


def outlier_layer():
    """Correlated inputs with a few strong channels, weights with a few large entries."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(128, 576, generator=g) * 0.02
    W.view(-1)[torch.randperm(W.numel(), generator=g)[:200]] *= 25
    X = torch.randn(1024, 576, generator=g) @ (torch.eye(576) + 0.5 * torch.randn(576, 576, generator=g) / 24)
    X[:, :6] *= 20
    return W, X


def out_err(v, W, X):
    return ((X @ (v - W).t()).norm() / (X @ W.t()).norm()).item()


def test_incoherence_makes_weights_incoherent():
    W, _ = outlier_layer()
    s_out, q_out = transform(128, 1)
    s_in, q_in = transform(576, 2)
    R = incoherence.rotate_weight(W, s_out, q_out, s_in, q_in)
    mu = lambda w: (w.abs().max() * w.numel() ** 0.5 / w.norm()).item()  # noqa: E731 (the paper's μ)
    assert mu(R) < 0.25 * mu(W)


def test_quip_2bit_beats_gptq_and_rtn_at_the_same_bits():
    W, X = outlier_layer()
    H = 2 * X.t() @ X / X.shape[0]
    s_out, q_out = transform(128, 1)
    s_in, q_in = transform(576, 2)
    Wr = incoherence.rotate_weight(W, s_out, q_out, s_in, q_in)
    Hr = incoherence.rotate_hessian(H, s_in, q_in)
    m = IncoherentLinear(576, 128, 2, 64, False)
    codes, scales, offsets, _ = gptq_quantize(Wr, Hr, 2, 64, False, act_order=False)
    m.q.set_codes(codes, scales, offsets)
    for buf, v in zip(("signs_out", "q_out", "signs_in", "q_in"), (s_out, q_out, s_in, q_in)):
        getattr(m, buf).copy_(v)
    c, s, o, _ = gptq_quantize(W, H, 2, 64, False, act_order=True)
    gptq = grid.dequantize(c, s, o, 2, 64)
    rtn = grid.fake_quantize(W, 2, 64, symmetric=False)
    quip = m.dequantize()
    assert out_err(quip, W, X) < 0.7 * out_err(gptq, W, X)
    assert out_err(quip, W, X) < 0.5 * out_err(rtn, W, X)
    x = X[:5]
    torch.testing.assert_close(m(x), x @ quip.t(), rtol=1e-4, atol=1e-3)  # run-time rotations = dequantized weight


def test_quip_on_tiny_llama(tiny, tiny_ids):
    model, _ = tiny
    calib = torch.randint(3, 259, (4, 32), generator=torch.Generator().manual_seed(0))
    ref = model(tiny_ids).logits
    out = get("quip").apply(model, config_from_dict({"method": "quip", "bits": 4}), calib)
    lin = out.model.layers[0].self_attn.q_proj
    assert isinstance(lin, IncoherentLinear) and lin.q.bits == 4
    k = out.model.layers[0].self_attn.k_proj
    assert torch.equal(lin.signs_in, k.signs_in) and torch.equal(lin.q_in, k.q_in)  # a shared input: one V
    assert not torch.equal(lin.signs_out[:8], out.model.layers[1].self_attn.q_proj.signs_out[:8])
    assert ((out(tiny_ids).logits - ref).norm() / ref.norm()) < 0.2


@pytest.mark.parametrize(
    "bad,match", [({"bits": 1}, "bits"), ({"dampening": 0}, "dampening"), ({"group_size": 0}, "group")]
)
def test_bad_config(bad, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict({"method": "quip", **bad})
