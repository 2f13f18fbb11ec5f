import os
from pathlib import Path

import pytest

os.environ.setdefault("EFFLM_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs 2 workers on 2 cores: one torch thread each
    import torch

    torch.set_num_threads(1)

_REPO = Path(__file__).resolve().parents[1]
_USER_DB = _REPO / "runs" / "efflm.sqlite"
_REFERENCE_DB = _REPO / "results" / "efflm.sqlite"


def _stamp(p: Path):
    return (p.stat().st_size, p.stat().st_mtime_ns) if p.exists() else None


@pytest.fixture(scope="session", autouse=True)
def _tests_never_write_the_results_databases():
    """Every test that records a run passes ``--db`` under its tmp_path: the user's
    ``runs/efflm.sqlite`` and the committed ``results/efflm.sqlite`` must come out of a test run untouched."""
    before = [_stamp(p) for p in (_USER_DB, _REFERENCE_DB)]
    yield
    for p, b in zip((_USER_DB, _REFERENCE_DB), before):
        assert _stamp(p) == b, f"a test wrote {p}; pass --db under tmp_path"


@pytest.fixture
def tiny():
    from efflm.io.load import load

    return load("tiny-llama")


@pytest.fixture(scope="session")
def tiny_ids():
    import torch

    return torch.randint(3, 259, (1, 24), generator=torch.Generator().manual_seed(1))


# Files whose tests take minutes (the default model, benchmark scripts end to end, training suites):
# collected first, so that `make test`'s two workers start on them and the short files fill in
# around them, instead of one worker finishing a long file alone at the end.
_LONG_FIRST = ("tests/integration/", "tests/benchmarks/", "tests/distill/test_kd.py", "tests/finetune/test_train.py")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        path = item.path.relative_to(_REPO).as_posix()
        return next((i for i, p in enumerate(_LONG_FIRST) if path.startswith(p)), len(_LONG_FIRST))

    items.sort(key=rank)  # stable: the order within each file is kept


@pytest.fixture
def gptq(tmp_path):
    """A GPTQ W4 g32 recipe file (tests of inputs refused before work)."""
    p = tmp_path / "gptq.yaml"
    p.write_text("- method: gptq\n  bits: 4\n  group_size: 32\n")
    return str(p)
