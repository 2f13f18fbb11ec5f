"""Super-block lattices: K-quant scales are d·sc exactly in fp16 and factor back; integer zero points."""

import pytest
import torch

from efflm.nn.codes import groups
from efflm.nn.superblocks import KQUANTS, factor, int_zero_point, lattice, round_up, zero_points


def weights(rows: int = 6, cols: int = 512) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(rows, cols, generator=g) * torch.logspace(-3, 0, rows)[:, None]
    w[0, :256] = 0  # an empty super-block
    w[1, :16] = 0.0  # an empty group inside a non-empty super-block
    w[2] = w[2].abs() + 0.01  # groups with no negative weight (offset 0 on the asymmetric types)
    return w


@pytest.mark.parametrize("name", sorted(KQUANTS))
def test_lattice_scales_are_multiples_of_one_fp16_per_super_block(name):
    kq = KQUANTS[name]
    scales, offsets = lattice(groups(weights(), kq.group_size), kq)
    assert (offsets is None) == kq.symmetric
    d, sc = factor(scales, kq, signed=kq.symmetric)
    per = 256 // kq.group_size
    assert torch.equal((d.float()[..., None] * sc).reshape(scales.shape), scales.float())
    assert sc.abs().max() <= kq.levels and (sc != 0).all()  # a zero scale would leave no codes
    if offsets is not None:
        dmin, m = factor(-offsets.float(), kq, signed=False)
        assert torch.equal(-(dmin.float()[..., None] * m).reshape(offsets.shape), offsets.float())
        assert m.min() >= 0 and m.max() <= kq.levels
    assert sc.shape[-1] == per


def test_factor_refuses_free_scales():
    kq = KQUANTS["Q4_K"]
    free = (torch.rand(4, 16) * 0.1 + 0.01).half()
    assert factor(free, kq, signed=False) is None


def test_round_up_keeps_the_mantissa_and_never_goes_down():
    x = torch.tensor([0.0, 1e-9, 0.1, 0.123456, 3.0, 1000.0])
    for bits in (4, 5, 7):
        y = round_up(x, bits)
        assert (y >= x).all() and (y >= 2.0**-14).all()
        m = y / torch.exp2(torch.floor(torch.log2(y)))  # in [1, 2)
        assert torch.equal(m * 2 ** (bits - 1), (m * 2 ** (bits - 1)).round())


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_int_zero_point_offsets_are_integer_multiples(bits):
    s, o = int_zero_point(groups(weights(), 32), bits)
    z = zero_points(s, o, bits)
    assert z is not None and z.min() >= 0 and z.max() <= 2**bits - 1
    assert torch.equal((-s.float() * z).half(), o)
    lo_only = groups(weights().abs() + 0.5, 32)  # every weight positive: the range still holds 0
    assert (zero_points(*int_zero_point(lo_only, bits), bits) == 0).all()


def test_min_max_offsets_have_no_integer_zero_point():
    from efflm.quantize.grid import grid

    s, o = grid(weights(), 4, 32, False)
    assert zero_points(s, o, 4) is None
