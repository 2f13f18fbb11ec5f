"""NF4 (QLoRA's storage type): every decoder Linear becomes NF4 codes within half a level of its
weights, and a block that does not divide a Linear's inputs is refused before any weight loads."""

import pytest

from efflm.core.errors import ConfigError
from efflm.models.arch import decoder_linears
from efflm.nn.nf4_linear import NF4, NF4Linear
from efflm.quantize import nf4


def test_nf4_rounds_every_decoder_linear_within_half_a_level(tiny):
    model, _ = tiny
    weights = {path: lin.weight.detach().clone() for path, lin in decoder_linears(model)}
    out = nf4.apply(model, nf4.NF4Config())
    gap = (NF4[1:] - NF4[:-1]).max() / 2
    for path, w in weights.items():
        q = out.get_submodule(path)
        assert isinstance(q, NF4Linear) and q.block == 64
        absmax = w.reshape(-1, 64).abs().amax(1, keepdim=True)
        err = (q.dequantize() - w).reshape(-1, 64).abs() / absmax
        assert err.max() <= gap * 1.02, path  # half the widest level gap, plus the int8 second level


def test_nf4_refuses_a_block_that_does_not_divide_the_inputs(tiny):
    model, _ = tiny
    with pytest.raises(ConfigError, match="nf4: block 48 does not divide"):
        nf4.check(model.config, nf4.NF4Config(block=48))
    with pytest.raises(ConfigError, match="block must be a positive even number"):
        nf4.NF4Config(block=3)
