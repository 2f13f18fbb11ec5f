"""Paper shape on the default model (SparseGPT Table / Wanda Table 3): at 50% unstructured the
perplexity gap to dense of Wanda and of SparseGPT is at most a third of magnitude pruning's
(LLaMA-7B: dense 5.68, magnitude 17.29, SparseGPT 7.22, Wanda 7.26); at 2:4 both beat magnitude."""

import pytest
from smol_helpers import ppl_after

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def magnitude(smol):
    _, _, ids = smol
    return {p: ppl_after([{"method": "magnitude", "pattern": p}], ids) for p in ("unstructured", "2:4")}


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_half_sparsity_gap_is_a_third_of_magnitudes(smol, ppl, calib, magnitude, method):
    _, _, ids = smol
    dense, _ = ppl
    ours = ppl_after([{"method": method, "sparsity": 0.5}], ids, calib)
    assert ours - dense <= (magnitude["unstructured"] - dense) / 3, (method, ours, magnitude, dense)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_two_four_beats_magnitude(smol, calib, magnitude, method):
    _, _, ids = smol
    ours = ppl_after([{"method": method, "pattern": "2:4"}], ids, calib)
    assert ours < 0.5 * magnitude["2:4"], (method, ours, magnitude)
