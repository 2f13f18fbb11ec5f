"""Per method, on tiny-llama: zero-init, frozen base, peft interop both ways, merge, DyLoRA."""

import pytest
import torch

from efflm.finetune.peft_files import load_adapter, save_adapter
from efflm.models.sources import ready
from efflm.models.tiny import tiny_llama
from tests.finetune.conftest import TINY_CONFIGS, adapted, perturb

IDS = torch.randint(3, 250, (2, 12), generator=torch.Generator().manual_seed(0))
ZERO_INIT = ["lora", "dora", "lora_fa", "dylora", "adalora", "ia3", "llama_adapter"]
MERGEABLE = ["lora", "dora", "lora_fa", "dylora", "adalora", "ia3"]
PEFT_TOL = 1e-5  # fp32; observed ≤ 3e-7 (same math, other summation order)


def base():
    return ready(tiny_llama()[0])


@pytest.mark.parametrize("name", ZERO_INIT)
def test_zero_initialised_adapter_leaves_logits_unchanged(name):
    m, _, _ = adapted(name)
    assert torch.equal(m(IDS).logits, base()(IDS).logits)


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_gradients_reach_only_adapter_tensors_and_base_bytes_stay(name):
    m, _, _ = adapted(name)
    perturb(m)
    frozen = {k: v.clone() for k, v in m.state_dict().items()}
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable, "nothing to train"
    assert all(any(t in n for t in ("lora_", "ia3_l", "prompt_embeddings", "adaption_")) for n in trainable)
    if name == "lora_fa":  # A frozen at its init, only B trained
        assert not any("lora_A" in n for n in trainable)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    m(IDS).logits.float().pow(2).mean().backward()
    assert all(p.grad is None for n, p in m.named_parameters() if n not in trainable)
    opt.step()
    after = m.state_dict()
    changed = {k for k in frozen if not torch.equal(frozen[k], after[k])}
    assert changed and changed <= {k for k in after if any(k.startswith(t) or k == t for t in trainable)}


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_peft_loads_efflm_adapter_with_the_same_logits(name, tmp_path):
    peft = pytest.importorskip("peft")
    m, _, cfg = adapted(name)
    perturb(m)
    if name == "dylora":
        from efflm.finetune.dylora import set_rank

        set_rank(m, cfg.save_rank)
    save_adapter(m, cfg, tmp_path / "a", {})
    ref = base()
    if name == "qlora":  # peft's base: the same NF4 weights, dequantized into plain Linears
        from efflm.finetune.adapter import merge
        from efflm.nn.adapters import adapter_modules

        q, _, _ = adapted("qlora")
        for a in adapter_modules(q).values():
            a.lora_B.weight.data.zero_()
        ref = merge(q)
    pm = peft.PeftModel.from_pretrained(ref, str(tmp_path / "a")).eval()
    with torch.no_grad():
        theirs = pm(input_ids=IDS).logits[:, -IDS.shape[1] :]  # peft returns the virtual tokens' logits too
    torch.testing.assert_close(theirs, m(IDS).logits, atol=PEFT_TOL, rtol=0)


PEFT_CONFIGS = {
    "lora": lambda p: p.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]),
    "dora": lambda p: p.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True),
    "ia3": lambda p: p.IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]),
    "prompt_tuning": lambda p: p.PromptTuningConfig(num_virtual_tokens=3),
    "prefix_tuning": lambda p: p.PrefixTuningConfig(num_virtual_tokens=3),
    "llama_adapter": lambda p: p.AdaptionPromptConfig(adapter_len=3, adapter_layers=2),
}


@pytest.mark.parametrize("name", sorted(PEFT_CONFIGS))
def test_efflm_loads_peft_adapter_with_the_same_logits(name, tmp_path):
    peft = pytest.importorskip("peft")
    config = PEFT_CONFIGS[name](peft)
    config.task_type = "CAUSAL_LM"
    pm = peft.get_peft_model(tiny_llama()[0], config)
    perturb(pm)
    pm.save_pretrained(str(tmp_path / "p"))
    pm.eval()
    with torch.no_grad():
        theirs = pm(input_ids=IDS).logits
    m, cfg = load_adapter(base(), tmp_path / "p")
    assert cfg.method == name
    torch.testing.assert_close(m(IDS).logits, theirs[:, -IDS.shape[1] :], atol=PEFT_TOL, rtol=0)


@pytest.mark.parametrize("name", MERGEABLE)
def test_merge_equals_the_unmerged_forward(name):
    from efflm.finetune.adapter import merge

    m, _, _ = adapted(name)
    perturb(m)
    want = m(IDS).logits
    torch.testing.assert_close(merge(m)(IDS).logits, want, atol=1e-5, rtol=0)  # fp32 reassociation


def test_dylora_truncation_is_the_nested_lora():
    from efflm.finetune.dylora import set_rank
    from efflm.nn.adapters import adapter_modules

    m, _, _ = adapted("dylora")
    perturb(m)
    set_rank(m, 2)
    got = m(IDS).logits
    with torch.no_grad():
        for a in adapter_modules(m).values():  # the same adapter at full rank with components 2.. removed
            a.lora_B.weight[:, 2:] = 0
            a.alpha = a.alpha * a.r / 2  # alpha/r at rank r == alpha/2 at rank 2
    set_rank(m, 4)
    torch.testing.assert_close(m(IDS).logits, got, atol=1e-6, rtol=0)


def test_nf4_bits_and_error():
    from efflm.nn.nf4_linear import NF4, NF4Linear

    lin = torch.nn.Linear(256, 64, bias=False)
    q = NF4Linear.from_linear(lin)
    nbytes = sum(t.numel() * t.element_size() for t in q.buffers())
    assert nbytes * 8 / lin.weight.numel() == pytest.approx(4.127, abs=0.01)
    gap = (NF4[1:] - NF4[:-1]).max() / 2
    absmax = lin.weight.detach().reshape(-1, 64).abs().amax(1, keepdim=True)
    err = (q.dequantize() - lin.weight).reshape(-1, 64).abs() / absmax
    assert err.max() <= gap * 1.02  # half the widest level gap, plus the int8 second level


def test_adapter_for_another_base_is_refused(tmp_path):
    from efflm.core.errors import EfflmError
    from efflm.finetune.peft_files import check_base

    with pytest.raises(EfflmError, match="another base"):
        check_base(tmp_path, {"base": {"hash": "aaaa", "spec": "x"}}, "bbbb")


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_decode_path_runs_every_adapter_unmerged_like_the_forward(name):
    from efflm.inference.engine import Engine

    m, _, _ = adapted(name)
    perturb(m)
    ids = IDS[:1]
    want = m(ids).logits
    engine = Engine(m)
    engine.start(1, ids.shape[1] + 2)
    got = torch.cat([engine.feed(ids[:, :8], all_logits=True), engine.feed(ids[:, 8:], all_logits=True)], dim=1)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)  # prefill, then the rest through the cache


def test_own_memory_copies_every_tensor_and_keeps_ties():
    from efflm.models.sources import own_memory

    m = base()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    old = [p.data for p in m.parameters()]  # kept alive, so no address can be reused
    own_memory(m)
    assert not {t.data_ptr() for t in old} & {p.data_ptr() for p in m.parameters()}  # new storage throughout
    assert m.lm_head.weight is m.model.embed_tokens.weight  # still tied
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_the_matrix_covers_every_fine_tuning_method():
    from efflm.methods import methods
    from tests.finetune.conftest import DISTILL_CONFIGS, FULL_CONFIGS

    assert set(TINY_CONFIGS) | set(FULL_CONFIGS) == {m.name for m in methods() if m.family == "finetune"}
    assert set(DISTILL_CONFIGS) == {m.name for m in methods() if m.family == "distill"}


@pytest.mark.parametrize("name", sorted(set(TINY_CONFIGS) - {"qlora"}))  # NF4 needs inputs divisible by 64
def test_a_compressed_base_stays_frozen_under_every_adapter(name):
    from efflm.methods import config_from_dict, get
    from tests.finetune.conftest import tiny_config

    m = base()
    m = get("llm_pruner").apply(
        m, config_from_dict({"method": "llm_pruner", "ratio": 0.25}), torch.randint(3, 250, (2, 32))
    )
    assert any(p.requires_grad for p in m.parameters())  # the pruner's new Linears come out trainable
    m = get(name).apply(m, tiny_config(name), None)
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    assert names and all(any(t in n for t in ("lora_", "ia3_l", "prompt_embeddings", "adaption_")) for n in names)
