"""SVD / FWSVD / LoSparse: exactness at full rank, the global budget, weighting, bad input."""

import pytest
import torch

from efflm.core.errors import ConfigError
from efflm.lowrank.factorize import allocate_ranks, factorize
from efflm.lowrank.fwsvd import fisher_row_importance
from efflm.lowrank.losparse import sparse_residual
from efflm.methods import check_for_model, config_from_dict, get
from efflm.models.arch import decoder_linears
from efflm.nn.lowrank_linear import LowRankLinear

CALIB = torch.randint(3, 259, (2, 64), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("weighted", [False, True])
def test_full_rank_factorization_equals_the_original_layer(weighted):
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(48, 32, bias=True)
    r = torch.rand(32, generator=g) + 0.1 if weighted else None
    A, B = factorize(lin.weight.data, 32, r)
    low = LowRankLinear(48, 32, 32, bias=True).set_factors(A, B, lin.bias.data)
    x = torch.randn(5, 48, generator=g)
    torch.testing.assert_close(low(x), lin(x), atol=1e-5, rtol=1e-4)


def test_sparse_residual_is_stored_as_csr_and_added():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(16, 32, generator=g)
    A, B = factorize(W, 4)
    S = sparse_residual(W - B @ A, torch.ones_like(W), 0.1)
    assert int((S != 0).sum()) == round(0.1 * W.numel())
    low = LowRankLinear(32, 16, 4, nnz=int((S != 0).sum())).set_factors(A, B, None, S)
    torch.testing.assert_close(low.weight_estimate(), B @ A + S)
    x = torch.randn(3, 32, generator=g)
    torch.testing.assert_close(low(x), x @ (B @ A + S).t(), atol=1e-5, rtol=1e-4)
    assert (W - low.weight_estimate()).norm() < (W - B @ A).norm()


def test_rank_allocation_respects_the_budget_and_favours_energy():
    spectra = {"flat": torch.ones(32), "peaked": torch.tensor([10.0] + [0.1] * 31)}
    shapes = {"flat": (32, 32), "peaked": (32, 32)}
    assert allocate_ranks(spectra, shapes, keep_params=10 * 64) == {"flat": 9, "peaked": 1}
    ranks = allocate_ranks(spectra, shapes, keep_params=20 * 64)  # flat reaches 16 = in·out/(in+out)
    assert ranks["flat"] is None and 32 * 32 + ranks["peaked"] * 64 <= 20 * 64  # the rest goes to "peaked"
    assert allocate_ranks(spectra, shapes, keep_params=1e9) == {"flat": None, "peaked": None}  # stays dense


def _stored(m):
    """Weight entries a decoder Linear holds (a sparse entry is a value and an int32 index)."""
    if isinstance(m, LowRankLinear):
        return m.A.numel() + m.B.numel() + (2 * m.nnz + m.out_features + 1 if m.nnz else 0)
    return m.weight.numel()


@pytest.mark.parametrize("name", ["svd", "fwsvd", "losparse"])
@pytest.mark.parametrize("ratio", [0.1, 0.3])
def test_parameters_really_shrink_to_the_budget(tiny, tiny_ids, name, ratio):
    model, _ = tiny
    before = sum(lin.weight.numel() for _, lin in decoder_linears(model))
    model = get(name).apply(model, config_from_dict({"method": name, "ratio": ratio}), CALIB)
    after = sum(_stored(m) for _, m in decoder_linears(model))
    assert after <= (1 - ratio) * before
    assert torch.isfinite(model(tiny_ids).logits).all()


def test_fisher_weighting_lowers_the_weighted_error():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(32, 48, generator=g)
    fisher = torch.rand(32, 48, generator=g) * torch.logspace(-3, 1, 32).unsqueeze(1)
    imp = fisher_row_importance(fisher)
    err = {}
    for key, weight in (("plain", None), ("fisher", imp)):
        A, B = factorize(W, 8, weight)
        err[key] = (imp.unsqueeze(1) * (W - B @ A)).norm()
    assert err["fisher"] < 0.9 * err["plain"]


@pytest.mark.parametrize(
    "step,pattern",
    [
        ({"method": "svd", "ratio": 1.0}, r"must be in \[0, 1\)"),
        ({"method": "fwsvd", "rank": -1}, "rank must be positive"),
        ({"method": "losparse", "density": 0.5}, "leaves no budget"),
    ],
)
def test_bad_lowrank_settings_are_refused(step, pattern):
    with pytest.raises(ConfigError, match=pattern):
        config_from_dict(step)


def test_rank_above_min_in_out_is_refused(tiny):
    with pytest.raises(ConfigError, match=r"rank 40 exceeds min\(in, out\) = 32 of self_attn.k_proj"):
        check_for_model(tiny[0].config, config_from_dict({"method": "svd", "rank": 40}))
