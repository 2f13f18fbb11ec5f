"""The chunked divergence through the head equals the plain one, loss and gradients."""

import functools

import pytest
import torch

from efflm.distill.chunked import chunked_divergence
from efflm.distill.divergence import forward_kl, generalized_jsd, reverse_kl


@pytest.mark.parametrize(
    "divergence",
    [
        functools.partial(forward_kl, temperature=2.0),
        reverse_kl,
        functools.partial(generalized_jsd, beta=0.3),
    ],
)
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunked_equals_plain_in_loss_and_gradients(divergence, chunk):
    g = torch.Generator().manual_seed(chunk)
    h0, w0 = torch.randn(23, 16, generator=g), torch.randn(40, 16, generator=g) * 0.3
    teacher = torch.randn(23, 40, generator=g) * 2
    out = []
    for c in (0, chunk):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        loss = chunked_divergence(h, w, teacher, divergence, c)
        (3.0 * loss).backward()  # a scaled upstream gradient reaches both
        out.append((loss.detach(), h.grad, w.grad))
    (lp, hp, wp), (lc, hc, wc) = out
    torch.testing.assert_close(lc, lp, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hc, hp, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(wc, wp, rtol=1e-4, atol=1e-6)


def test_a_frozen_head_gets_no_gradient_and_the_teacher_none():
    h = torch.randn(9, 8, requires_grad=True)
    w = torch.randn(12, 8)
    teacher = torch.randn(9, 12, requires_grad=True)
    chunked_divergence(h, w, teacher, reverse_kl, 4).backward()
    assert h.grad is not None and w.grad is None and teacher.grad is None
