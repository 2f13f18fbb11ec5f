"""Mixture-of-experts blocks (efflm.nn.experts): each expert one Linear triple computing what
transformers' stacked experts compute; calibration gives every expert every token; the router
stays as it was."""

import pytest
import torch

from efflm.calib import layerwise
from efflm.io.load import load
from efflm.methods import config_from_dict, get
from efflm.models.arch import decoder_layers, layout_for
from efflm.nn import efflm_modules
from efflm.nn.experts import Experts, route_all

MOE = ["tiny-mixtral", "tiny-qwen2-moe", "tiny-qwen3-moe"]


def _calib():
    return torch.randint(3, 259, (4, 32), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("spec", MOE)
def test_unstacked_experts_compute_transformers_experts(spec):
    from efflm.models.tiny import tiny_model

    hf, _ = tiny_model(spec)
    stacked = hf.model.layers[0].mlp.experts
    ours = Experts.from_stacked(stacked, hf.config.hidden_act)
    x = torch.randn(9, hf.config.hidden_size, generator=torch.Generator().manual_seed(0))
    idx = torch.randint(0, len(ours), (9, 2), generator=torch.Generator().manual_seed(1))
    idx[:, 1] = (idx[:, 0] + 1) % len(ours)  # two distinct experts a token
    w = torch.rand(9, 2, generator=torch.Generator().manual_seed(2))
    want = stacked(x, idx, w)
    torch.testing.assert_close(ours(x, idx, w), want, rtol=0, atol=1e-6)
    ours.all_tokens = True  # every expert computes every token; the output still sums the routed ones
    torch.testing.assert_close(ours(x, idx, w), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("spec", MOE)
def test_calibration_gives_every_expert_every_token(spec):
    """Each expert's down projection is observed on all calibration tokens, however few the router
    sends it (llm-compressor's MoE calibration), and the forward's result does not change."""
    model, _ = load(spec)
    seen: dict[str, int] = {}

    class Count:
        def __init__(self, path):
            self.path = path

        def add(self, x):
            seen[self.path] = seen.get(self.path, 0) + x.reshape(-1, x.shape[-1]).shape[0]

    calib = _calib()
    layerwise.run(model, calib, lambda path, lin: Count(path), lambda i, layer, obs: None)
    layout = layout_for(model.config)
    downs = [f"{layout.layers}.{i}.{n}" for i in range(2) for n in layout.mlp_linears if n.endswith("down_proj")]
    assert len(downs) == 2 * (4 + bool(layout.shared_expert))
    assert {p: seen[p] for p in downs} == {p: calib.numel() for p in downs}
    ids = calib[:1]
    before = model(ids).logits
    with route_all(model):
        torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["gptq", "awq", "rtn"])
@pytest.mark.parametrize("spec", MOE)
def test_every_expert_is_quantized_and_the_router_is_untouched(spec, method):
    model, _ = load(spec)
    layout = layout_for(model.config)
    routers = {n: p.clone() for n, p in model.named_parameters() if ".mlp.gate." in n or "shared_expert_gate" in n}
    assert routers
    cfg = config_from_dict({"method": method, "bits": 4, "group_size": 32})
    out = get(method).apply(model, cfg, _calib() if get(method).needs_calibration else None)
    grids = efflm_modules(out, "weight_grid")
    for i in range(len(decoder_layers(out))):
        for name in layout.mlp_linears:
            assert f"{layout.layers}.{i}.{name}" in grids
    assert len([g for g in grids if ".experts." in g]) == 2 * 4 * 3
    for n, p in out.named_parameters():
        if n in routers:
            assert torch.equal(p, routers.pop(n)), n
    assert not routers


def test_moe_checkpoints_stream_and_gpt2_is_read_whole(tmp_path):
    """A MoE checkpoint streams (its experts read one Linear at a time); GPT-2's transposed Conv1D
    weights are read whole."""
    from efflm import pipeline
    from tests.test_pipeline import write_tiny

    gptq = [config_from_dict({"method": "gptq"})]
    assert pipeline.streams(write_tiny(tmp_path / "moe", "tiny-qwen3-moe"), gptq)
    assert not pipeline.streams(write_tiny(tmp_path / "gpt2", "tiny-gpt2"), gptq)
    assert pipeline.streams(write_tiny(tmp_path / "dense", "tiny-qwen3"), [config_from_dict({"method": "gptq"})])


def test_experts_share_a_hessian_but_are_solved_one_at_a_time():
    """q/k/v stay one stacked solve; every expert (and the shared expert) its own, each with the
    same Hessian: the last one consumes it, the others get a copy."""
    from efflm.calib.hessian import Hessian

    attn, moe = Hessian(4, stats=False), Hessian(4, stats=False)
    for h in (attn, moe):
        h.add(torch.randn(8, 4))
    want = moe.H.clone()
    p = "model.layers.0."
    observers = {p + "self_attn.q_proj": attn, p + "self_attn.k_proj": attn, p + "mlp.shared_expert.gate_proj": moe}
    observers |= {p + f"mlp.experts.{e}.{n}": moe for e in range(3) for n in ("gate_proj", "up_proj")}
    got = list(layerwise.hessian_groups(observers, take=True))
    assert [paths for paths, _ in got] == [
        [p + "self_attn.q_proj", p + "self_attn.k_proj"],
        [p + "mlp.shared_expert.gate_proj"],
        *([p + f"mlp.experts.{e}.gate_proj", p + f"mlp.experts.{e}.up_proj"] for e in range(3)),
    ]
    assert all(torch.equal(H, want) for _, H in got[1:])
    assert moe.H is None and attn.H is None
