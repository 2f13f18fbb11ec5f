"""Training through a frozen compressed Linear: exact input gradient, no float weight kept."""

import pytest
import torch

from efflm.nn.nf4_linear import NF4Linear
from efflm.quantize.grid import to_quant_linear


@pytest.mark.parametrize("make", [NF4Linear.from_linear, lambda lin: to_quant_linear(lin, 4, 32, True)])
def test_input_gradient_is_exact_and_no_weight_is_saved(make):
    lin = torch.nn.Linear(128, 96, bias=True)
    q = make(lin)
    x = torch.randn(3, 128, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        y = q(x)
    (gx,) = torch.autograd.grad(y.square().sum(), x)
    x2 = x.detach().requires_grad_()
    (want,) = torch.autograd.grad(torch.nn.functional.linear(x2, q.dequantize(), q.bias).square().sum(), x2)
    torch.testing.assert_close(gx, want)
    assert (96, 128) not in saved and (128, 96) not in saved  # the backward rebuilds W from the codes
