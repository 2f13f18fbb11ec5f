"""The packed kernels are the CPU's: a module whose tensors are on another device (a GPU) runs its
torch path. Checked here on torch's ``meta`` device (no GPU needed) and, for the numbers, on the
CPU with the kernels refusing every tensor, as they refuse a GPU's."""

import pytest
import torch

from efflm.nn import c_kernels
from efflm.nn.lut_linear import LUTLinear
from efflm.quantize import grid


def _ql(bits, group_size, dtype=torch.bfloat16, n=96, k=128):
    lin = torch.nn.Linear(k, n, bias=True)
    torch.manual_seed(0)
    torch.nn.init.normal_(lin.weight, std=0.05)
    ql = grid.to_quant_linear(lin, bits, group_size, True)
    ql.set_compute_dtype(dtype)
    return ql


def _lut():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 8, (16, 64), generator=g, dtype=torch.uint8)
    sparse = torch.zeros(16, 64)
    sparse[3, 5], sparse[9, 60] = 0.5, -0.25
    return LUTLinear.from_parts(codes, torch.randn(16, 8, generator=g), sparse, 3)


def test_the_dispatch_predicate_takes_only_cpu_tensors():
    assert c_kernels.takes(torch.empty(2))
    assert not c_kernels.takes(torch.empty(2, device="meta"))


@pytest.mark.parametrize("bits,group_size", [(4, 32), (4, 128), (8, -1)])
def test_a_kernel_layout_on_another_device_takes_the_torch_path(bits, group_size, monkeypatch):
    if group_size == 128:  # torch's int4 layout (efflm's own is taken where it builds)
        monkeypatch.setattr(c_kernels, "available", lambda: False)
    ql = _ql(bits, group_size)
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    assert ql.kernel(x) is not None  # on the CPU a packed kernel runs
    assert ql.kernel(x.to("meta")) is None
    y = ql.to("meta")(x.to("meta"))
    assert y.device.type == "meta" and y.shape == (3, 96)


def test_the_lut_kernel_is_the_cpus():
    m = _lut()
    x = torch.randn(1, 64)
    assert m.kernel(x.to("meta")) is None
    if c_kernels.available():
        assert m.kernel(x) == "lut"
    y = m.to("meta")(x.to("meta"))  # its table, codes and sparse part dequantized on that device
    assert y.device.type == "meta" and y.shape == (1, 16)


@pytest.mark.parametrize("bits,group_size,int4", [(4, 32, False), (3, 64, True), (8, -1, False)])
def test_the_torch_path_of_a_kernel_layout_is_the_dequantized_product(bits, group_size, int4, monkeypatch):
    """What a GPU computes: codes unpacked from the kernel's layout (efflm's q4 blocks, torch's int4
    pack, int8 rows) with torch ops, dequantized, one matmul."""
    if int4:
        monkeypatch.setattr(c_kernels, "available", lambda: False)
    ql = _ql(bits, group_size)
    assert not ql.layout.portable or bits == 8
    monkeypatch.setattr(c_kernels, "takes", lambda x: False)
    x = torch.randn(5, 128, dtype=torch.bfloat16)
    assert ql.kernel(x) is None
    ref = torch.nn.functional.linear(x, ql.dequantize(torch.bfloat16)) + ql.bias
    assert torch.equal(ql(x), ref)
    m = _lut()
    xl = torch.randn(1, 64)
    assert m.kernel(xl) is None
    torch.testing.assert_close(m(xl), torch.nn.functional.linear(xl, m.dequantize(torch.float32)))
