import pytest
import torch


@pytest.fixture
def sharp():
    """tiny-llama with its matrices scaled up: peaked, varied next-token distributions (the plain
    random init repeats one token under greedy decoding)."""
    from efflm.io.load import load

    model, tok = load("tiny-llama")
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8)
    return model, tok
