import pytest
import torch

from efflm.methods import config_from_dict, get
from efflm.models.sources import ready
from efflm.models.tiny import tiny_llama

# Every fine-tuning method, small enough for tiny-llama (2 layers, hidden 64).
TINY_CONFIGS = {
    "lora": {"r": 4},
    "dora": {"r": 4},
    "lora_fa": {"r": 4},
    "dylora": {"r": 4, "save_rank": 2},
    "adalora": {"init_r": 6, "target_r": 3, "tinit": 1, "tfinal": 1},
    "ia3": {},
    "prompt_tuning": {"n_virtual": 5},
    "prefix_tuning": {"n_virtual": 5},
    "llama_adapter": {"adapter_len": 4, "adapter_layers": 1},
    "qlora": {"r": 4},
}


# Every method that trains the whole model (saved whole) or distills (a teacher needed).
FULL_CONFIGS = {"full": {}, "lomo": {}, "adalomo": {}, "mezo": {}}
DISTILL_CONFIGS = {"kd": {"r": 4}, "gkd": {"r": 4}, "llm_qat": {"bits": 4, "group_size": 32}}


def tiny_config(name: str):
    fields = {**TINY_CONFIGS, **FULL_CONFIGS, **DISTILL_CONFIGS}[name]
    return config_from_dict({"method": name, **fields})


@pytest.fixture
def tiny():
    model, tok = tiny_llama()
    return ready(model), tok


def adapted(name: str):
    model, tok = tiny_llama()
    model = ready(model)
    cfg = tiny_config(name)
    return get(name).apply(model, cfg, None), tok, cfg


def perturb(model: torch.nn.Module, seed: int = 1) -> None:
    """Move every adapter tensor off its init, so a test sees the adapter act."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad or n.endswith("lora_A.weight"):
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
