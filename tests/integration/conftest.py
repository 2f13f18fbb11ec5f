"""Shared fixtures of the default-model integration tests (computed once per session)."""

import pytest
from smol_helpers import SEQ, WINDOWS, ppl_after

from efflm.datasets import text
from efflm.eval.metrics import perplexity
from efflm.io.load import load


@pytest.fixture(scope="session")
def smol():
    model, tok = load("smollm2-135m")
    return model, tok, text.eval_tokens(tok, SEQ * WINDOWS)


@pytest.fixture(scope="session")
def calib(smol):
    return text.calibration_windows(smol[1], 8, 512, seed=0)


@pytest.fixture(scope="session")
def ppl(smol):
    model, _, ids = smol
    dense = perplexity(model, ids, SEQ, WINDOWS)["ppl"]
    rtn = {b: ppl_after([{"method": "rtn", "bits": b, "group_size": 64}], ids) for b in (3, 4, 8)}
    return dense, rtn
