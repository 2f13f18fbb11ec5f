"""Every supported family beside Llama (``tiny-<family>``: its own transformers class, random
weights): efflm's decode engine gives transformers' logits, and every method that changes a model
applies, runs, saves and reloads bit-exactly on it (tiny-llama's own matrix: tests/core/test_methods.py)."""

import pytest
import torch

from efflm.core import recipe as recipes
from efflm.core.errors import ConfigError
from efflm.methods import check_for_model, get, methods
from efflm.models.tiny import TINY_FAMILIES
from tests.core.test_methods import ZERO_INIT, default_config

FAMILIES = sorted(s for s in TINY_FAMILIES if s != "tiny-llama")
ALL_FAMILIES = sorted(TINY_FAMILIES)
MOE = ("tiny-mixtral", "tiny-qwen2-moe", "tiny-qwen3-moe")
REFUSED = {("llm_pruner", s): "mixture-of-experts" for s in MOE}  # (method, family) -> the refusal's words
MODEL = [m.name for m in methods() if m.family != "data"]


def _load(spec):
    from efflm.io.load import load

    return load(spec)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 259, (2, 14), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("spec", ALL_FAMILIES)
def test_the_loaded_model_computes_what_its_own_transformers_class_does(spec, ids):
    """efflm loads each family as the model it is (Phi-3 as the Llama it computes, its fused
    projections split): the same logits as the family's transformers class."""
    from efflm.models.tiny import tiny_model

    original, _ = tiny_model(spec)
    model, _ = _load(spec)
    if spec in MOE:  # each expert one Linear triple, not transformers' stacked matmuls: summation order
        torch.testing.assert_close(model(ids).logits, original(ids).logits, rtol=0, atol=1e-5)
    else:
        assert torch.equal(model(ids).logits, original(ids).logits)


@pytest.mark.parametrize("spec", ALL_FAMILIES)
def test_engine_prefill_and_steps_give_transformers_logits(spec, ids):
    from efflm.inference.engine import Engine

    model, _ = _load(spec)
    ref = model(ids).logits
    for fast in (True, False):
        engine = Engine(model, fast=fast)
        engine.start(2, 32)
        got = [engine.step(ids[:, :9], all_logits=True)]
        got += [engine.step(ids[:, j : j + 1], all_logits=True) for j in range(9, ids.shape[1])]
        torch.testing.assert_close(torch.cat(got, 1), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("spec", ALL_FAMILIES)
def test_pad_slots_do_not_count_as_distance_inside_a_window(spec, ids):
    """A batch whose rows are padded on the left and again mid-cache (as when the server prefills
    another row while this one decodes) gives each row the logits it gets alone: sliding windows
    count positions, not cache slots."""
    from efflm.inference.engine import Engine

    model, _ = _load(spec)
    valid = torch.ones(2, 14, dtype=torch.bool)
    valid[1, :3] = False  # left padding
    valid[1, 7:10] = False  # a gap in the middle of the row's cache
    e = Engine(model, fast=False)
    e.start(2, 32)
    got = torch.cat([e.step(ids[:, :5], valid[:, :5], all_logits=True)]
                    + [e.step(ids[:, j : j + 1], valid[:, j : j + 1], all_logits=True) for j in range(5, 14)], 1)  # fmt: skip
    for row in range(2):
        keep = valid[row]
        alone = model(ids[row : row + 1, keep]).logits[0]
        torch.testing.assert_close(got[row, keep], alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("spec", ALL_FAMILIES)
def test_greedy_generation_matches_transformers(spec, ids):
    from efflm.inference.generate import SamplingConfig, generate_ids

    model, _ = _load(spec)
    want = model.generate(ids[:1], max_new_tokens=6, do_sample=False, eos_token_id=None)[0, ids.shape[1] :]
    outs, _ = generate_ids(model, None, ids[:1], torch.ones_like(ids[:1]), SamplingConfig(max_new_tokens=6))
    assert outs[0].tokens == want.tolist()


@pytest.mark.families
@pytest.mark.parametrize("name", MODEL)
@pytest.mark.parametrize("spec", FAMILIES)
def test_every_method_applies_saves_and_reloads_on_every_family(spec, name, ids, tmp_path):
    from efflm.finetune.hooks import hooks_for
    from efflm.io.load import load
    from efflm.io.save import save

    model, tok = _load(spec)
    m = get(name)
    cfg = default_config(name)
    if (name, spec) in REFUSED:  # says so in one line, before any work
        with pytest.raises(ConfigError, match=REFUSED[name, spec]) as e:
            check_for_model(model.config, cfg)
        assert "\n" not in str(e.value)
        return
    check_for_model(model.config, cfg)
    calib = torch.randint(3, 259, (4, 64), generator=torch.Generator().manual_seed(0)) if m.needs_calibration else None
    ref = model(ids).logits.clone()
    out = m.apply(model, cfg, calib)
    logits = out(ids).logits
    assert torch.isfinite(logits).all()
    trains = m.family in ("finetune", "distill")
    if m.family in ("quantize", "prune", "lowrank") or (trains and name not in ZERO_INIT):
        assert not torch.equal(logits, ref) and (logits - ref).abs().max() < 10 * ref.abs().max()
    else:
        assert torch.equal(logits, ref)
    assert out.generate(ids[:1], max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
    if trains and hooks_for(cfg).output != "model":
        return  # adapters are saved in peft's format: tests/finetune
    if trains:  # a full-parameter run's model is saved whole, after the loop's end (LLM-QAT packs)
        from tests.finetune.conftest import perturb

        perturb(out)
        hooks_for(cfg).finish(out)
    save(out, tok, tmp_path / "m", None if trains else recipes.to_yaml([cfg]))
    back, _ = load(str(tmp_path / "m"))
    assert torch.equal(back(ids).logits, out(ids).logits)


@pytest.mark.parametrize("spec", ALL_FAMILIES)
def test_llama_adapter_prompt_attention_is_the_same_in_the_engine_and_the_forward(spec, ids):
    """With its gates open, LLaMA-Adapter's prompt attention (queries normed and scaled as the
    family's own: Qwen3's q_norm, Gemma's query_pre_attn_scalar) gives the engine the forward's logits."""
    from efflm.inference.engine import Engine
    from efflm.methods import config_from_dict

    model, _ = _load(spec)
    model = get("llama_adapter").apply(model, config_from_dict({"method": "llama_adapter", "adapter_layers": 2}))
    for m in model.modules():
        if hasattr(m, "adaption_gate"):
            m.adaption_gate.data.fill_(0.5)
    ref = model(ids).logits
    engine = Engine(model, fast=False)
    engine.start(2, 32)
    got = [engine.step(ids[:, :9], all_logits=True)]
    got += [engine.step(ids[:, j : j + 1], all_logits=True) for j in range(9, ids.shape[1])]
    torch.testing.assert_close(torch.cat(got, 1), ref, rtol=0, atol=1e-5)
