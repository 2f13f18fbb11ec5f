import os

import pytest

os.environ.setdefault("EFFLM_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def tiny():
    from efflm.io.load import load

    return load("tiny-llama")


@pytest.fixture(scope="session")
def tiny_ids():
    import torch

    return torch.randint(3, 259, (1, 24), generator=torch.Generator().manual_seed(1))
