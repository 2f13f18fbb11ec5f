import os
from pathlib import Path

import pytest

os.environ.setdefault("EFFLM_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_USER_DB = Path(__file__).resolve().parents[1] / "results" / "efflm.sqlite"


def _stamp(p: Path):
    return (p.stat().st_size, p.stat().st_mtime_ns) if p.exists() else None


@pytest.fixture(scope="session", autouse=True)
def _tests_never_write_the_users_results_database():
    """Every test that records a run passes ``--db`` under its tmp_path: the checkout's own
    ``results/efflm.sqlite`` holds the user's measured rows and must come out of a test run untouched."""
    before = _stamp(_USER_DB)
    yield
    assert _stamp(_USER_DB) == before, f"a test wrote {_USER_DB}; pass --db under tmp_path"


@pytest.fixture
def tiny():
    from efflm.io.load import load

    return load("tiny-llama")


@pytest.fixture(scope="session")
def tiny_ids():
    import torch

    return torch.randint(3, 259, (1, 24), generator=torch.Generator().manual_seed(1))
