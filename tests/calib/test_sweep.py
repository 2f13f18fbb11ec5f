"""The C column sweep (efflm/nn/csrc/sweep_cpu.c) against the torch reference loop, and the Gram
matrix computed in bands against x.t() @ x."""

import pytest
import torch

from efflm.calib.hessian import add_gram, gram
from efflm.calib.sweep import sweep, sweep_torch
from efflm.nn import c_kernels
from efflm.prune.sparsegpt import sparsegpt_prune
from efflm.quantize.ldlq import gptq_quantize

needs_kernel = pytest.mark.skipif(c_kernels.library() is None, reason="no C compiler / AVX2 here")


def _block(rows, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, n, generator=g)
    A = torch.randn(3 * n, n, generator=g)
    H = A.t() @ A / n + 0.1 * torch.eye(n)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    return W, U.contiguous()


def _both(W, U, a, b, **kw):
    out = []
    for fn in (sweep_torch, sweep):
        W1, err = W.clone(), torch.zeros_like(W)
        extra = {"codes": torch.zeros_like(W)} if kw.get("bits") else {}
        fn(W1, U, a, b, err, **kw, **extra)
        out.append((W1, err, extra.get("codes")))
    return out


@needs_kernel
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("rows,n,a,b", [(64, 128, 0, 128), (37, 100, 13, 77), (5, 3, 0, 3)])
def test_c_sweep_quantizes_like_the_torch_loop(symmetric, rows, n, a, b):
    W, U = _block(rows, n)
    S = W.abs().amax(dim=1, keepdim=True).expand(rows, n).contiguous() / 7.5
    O = None if symmetric else (-W.abs().amax(dim=1, keepdim=True)).expand(rows, n).contiguous()
    zeros = torch.rand(rows, n, generator=torch.Generator().manual_seed(1)) < 0.2
    (Wt, et, ct), (Wc, ec, cc) = _both(W, U, a, b, bits=4, scales=S, offsets=O, mask=zeros)
    # the C loop fuses each update's multiply-add (torch's vector loop does too, its tails do not):
    # a code can move by one where a value sits on a rounding boundary, nowhere else
    assert (ct != cc).float().mean() <= 0.002
    assert (ct - cc).abs().max() <= 1
    assert torch.equal(cc[:, :a], torch.zeros(rows, a)) and torch.equal(cc[:, b:], torch.zeros(rows, n - b))
    assert torch.all(cc[:, a:b][zeros[:, a:b]] == 8)  # exact zeros stay on the grid's zero
    torch.testing.assert_close(ec, et, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(Wc, Wt, rtol=1e-4, atol=1e-4)


@needs_kernel
def test_c_sweep_prunes_like_the_torch_loop():
    W, U = _block(48, 96, seed=2)
    mask = torch.rand(48, 96, generator=torch.Generator().manual_seed(3)) < 0.5
    (Wt, et, _), (Wc, ec, _) = _both(W, U, 0, 96, mask=mask)
    assert torch.equal(Wc == 0, Wt == 0) and torch.all(Wc[mask] == 0)
    torch.testing.assert_close(Wc, Wt, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ec, et, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="needs a mask"):
        sweep(W.clone(), U, 0, 96, torch.zeros_like(W))


@needs_kernel
def test_gptq_and_sparsegpt_agree_with_their_torch_loops(monkeypatch):
    W, _ = _block(96, 256, seed=4)
    X = torch.randn(1024, 256, generator=torch.Generator().manual_seed(5)) * torch.linspace(0.1, 3, 256)
    H = 2 * X.t() @ X / 1024
    fast_q = gptq_quantize(W, H, 4, 64, True, True)
    fast_p, _ = sparsegpt_prune(W, H, 0.5, "2:4")
    monkeypatch.setenv("EFFLM_SWEEP_KERNEL", "0")
    ref_q = gptq_quantize(W, H, 4, 64, True, True)
    ref_p, _ = sparsegpt_prune(W, H, 0.5, "2:4")
    assert (fast_q[0] != ref_q[0]).float().mean() <= 0.002
    assert torch.equal(fast_q[1], ref_q[1])
    assert torch.equal(fast_p == 0, ref_p == 0)
    torch.testing.assert_close(fast_p, ref_p, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n", [100, 256, 576, 700])
def test_gram_in_bands_is_xtx(n):
    x = torch.randn(300, n, generator=torch.Generator().manual_seed(n))
    G = gram(x)
    assert torch.equal(G, G.t())
    torch.testing.assert_close(G, x.t() @ x, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("n", [100, 576, 700])
def test_add_gram_in_place_gives_the_old_sum(n):
    """The Hessian's in-place accumulation has the values of H + (the banded, mirrored xᵀx)."""
    g = torch.Generator().manual_seed(n)
    x, H = torch.randn(300, n, generator=g), torch.randn(n, n, generator=g)
    H = H + H.t()
    G = torch.zeros(n, n)  # the previous construction: upper bands, then the strict upper mirrored
    for a in range(0, n, 256):
        G[a : a + 256, a:] = x[:, a : a + 256].t() @ x[:, a:]
    G.triu_()
    G += torch.triu(G, 1).t()
    expected = H + (x.t() @ x if n <= 256 else G)
    assert torch.equal(add_gram(H, x), expected)
