import pytest
import torch

from efflm.nn.codes import pack_codes, unpack_codes
from efflm.nn.quant_linear import QuantLinear
from efflm.quantize import grid


def _w(out=16, inp=128, seed=0):
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [32, -1])
def test_at_most_2_pow_bits_levels_per_group(bits, symmetric, group_size):
    w = _w()
    wq = grid.fake_quantize(w, bits, group_size, symmetric)
    g = group_size if group_size > 0 else w.shape[1]
    for row in wq.reshape(-1, g):
        assert row.unique().numel() <= 2**bits


@pytest.mark.parametrize("symmetric", [True, False])
def test_error_falls_as_bits_rise(symmetric):
    w = _w()
    errs = [(grid.fake_quantize(w, b, 32, symmetric) - w).pow(2).mean().item() for b in range(2, 9)]
    assert all(a > b for a, b in zip(errs, errs[1:])), errs


@pytest.mark.parametrize("bits", [3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_weights_on_the_grid_round_trip_exactly(bits, symmetric):
    once = grid.fake_quantize(_w(), bits, 32, symmetric)
    twice = grid.fake_quantize(once, bits, 32, symmetric)
    torch.testing.assert_close(twice, once, rtol=0, atol=1e-6)


def test_q4_1_style_grid_is_lossless_for_asymmetric():
    # A group built as d*q + m with q covering 0..15 (what llama.cpp's Q4_1 stores).
    d = torch.tensor(0.0123, dtype=torch.float16).float()
    m = torch.tensor(-0.0871, dtype=torch.float16).float()
    q = torch.randint(0, 16, (8, 32), generator=torch.Generator().manual_seed(0)).float()
    q[:, 0], q[:, 1] = 0, 15
    w = d * q + m
    torch.testing.assert_close(grid.fake_quantize(w, 4, 32, symmetric=False), w, rtol=0, atol=1e-6)


def test_symmetric_grid_uses_the_extreme_level_exactly():
    w = _w()
    wq = grid.fake_quantize(w, 4, 32, True)
    g = w.reshape(-1, 32)
    idx = g.abs().argmax(-1, keepdim=True)
    torch.testing.assert_close(wq.reshape(-1, 32).gather(-1, idx), g.gather(-1, idx), rtol=2e-3, atol=0)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_pack_unpack_round_trip(bits):
    q = torch.randint(0, 2**bits, (5, 64), dtype=torch.uint8)
    packed = pack_codes(q, bits)
    assert packed.numel() == (q.numel() // 2 if bits <= 4 else q.numel())
    assert torch.equal(unpack_codes(packed, bits, 64), q)


@pytest.mark.parametrize("bits,ratio", [(4, 8), (8, 4)])
def test_quant_linear_stores_packed_bytes_not_floats(bits, ratio):
    lin = torch.nn.Linear(256, 64, bias=False)
    ql = grid.to_quant_linear(lin, bits, 64, True)
    stored = sum(t.numel() * t.element_size() for t in ql.buffers())
    dense = lin.weight.numel() * 4
    assert not any(t.is_floating_point() and t.numel() >= lin.weight.numel() for t in ql.buffers())
    assert dense / stored > ratio * 0.9
    x = torch.randn(3, 256)
    expected = torch.nn.functional.linear(x, grid.fake_quantize(lin.weight.data, bits, 64, True))
    torch.testing.assert_close(ql(x), expected, rtol=1e-5, atol=1e-5)


def test_quant_linear_spec_rebuilds_an_equal_shell():
    ql = grid.to_quant_linear(torch.nn.Linear(64, 32, bias=True), 3, 32, False)
    shell = QuantLinear.from_spec(ql.spec())
    shell.load_state_dict(ql.state_dict())
    x = torch.randn(2, 64)
    assert torch.equal(shell(x), ql(x))
