"""One parametrized test over every registered method, on tiny-llama."""

import dataclasses
import sys

import pytest
import torch

from efflm.core import recipe as recipes
from efflm.methods import check_for_model, get, methods

ALL = [m.name for m in methods()]
MODEL = [m.name for m in methods() if m.family != "data"]  # data methods read texts, not a model
DATA = [m.name for m in methods() if m.family == "data"]
# Fine-tuning methods that start from the base exactly (zero-initialised adapters); prompt and
# prefix tuning start from random virtual tokens, QLoRA from the NF4-rounded base.
# Full-parameter methods and distillation (a LoRA student) change nothing until trained.
ZERO_INIT = {"lora", "dora", "lora_fa", "dylora", "adalora", "ia3", "llama_adapter"}
ZERO_INIT |= {"full", "lomo", "adalomo", "mezo", "kd", "gkd"}


def default_config(name: str):
    """The method's default config; fine-tuning methods at tiny-llama's size (2 layers)."""
    from tests.finetune.conftest import tiny_config

    return tiny_config(name) if get(name).family in ("finetune", "distill") else get(name).config_cls()


@pytest.mark.parametrize("name", MODEL)
def test_every_method_applies_and_model_still_runs(name, tiny, tiny_ids):
    model, tok = tiny
    m = get(name)
    cfg = default_config(name)
    check_for_model(model.config, cfg)
    calib = None
    if m.needs_calibration:
        calib = torch.randint(3, 259, (4, 64), generator=torch.Generator().manual_seed(0))
    ref = model(tiny_ids).logits.clone()
    out_model = m.apply(model, cfg, calib)
    logits = out_model(tiny_ids).logits
    assert logits.shape == ref.shape
    assert torch.isfinite(logits).all()
    trains = m.family in ("finetune", "distill")
    if m.family in ("quantize", "prune", "lowrank") or (trains and name not in ZERO_INIT):
        assert not torch.equal(logits, ref)
        assert (logits - ref).abs().max() < 10 * ref.abs().max()  # and did not wreck them
    else:  # baseline, decode-path and zero-initialised adapters leave a full forward as it was
        assert torch.equal(logits, ref)
    assert out_model.generate(tiny_ids, max_new_tokens=3, do_sample=False).shape[1] == tiny_ids.shape[1] + 3


@pytest.mark.parametrize("name", ALL)
def test_every_method_config_round_trips_through_yaml(name):
    cfg = get(name).config_cls()
    back = recipes.from_yaml(recipes.to_yaml([cfg]))
    assert back == [cfg]
    assert dataclasses.is_dataclass(cfg) and cfg.__dataclass_params__.frozen


@pytest.mark.parametrize("name", ALL)
def test_every_method_file_names_its_paper_and_catalog_entry(name):
    import sys

    from efflm.catalog import store

    m = get(name)
    doc = sys.modules[m.apply.__module__].__doc__ or ""
    assert doc.strip(), f"{m.apply.__module__} has no docstring"
    if m.arxiv:  # the paper file's docstring gives its arXiv id, and the catalog agrees
        assert m.arxiv in doc
    entry = store.load().by_id().get(m.paper)
    assert entry is not None, f"{name}: catalog has no entry {m.paper!r}"
    if m.arxiv and entry.get("arxiv"):
        assert entry["arxiv"] == m.arxiv


@pytest.mark.parametrize("name", MODEL)
def test_every_method_saves_and_reloads_bit_exactly(name, tiny, tiny_ids, tmp_path):
    from efflm.io.load import load
    from efflm.io.save import save

    model, tok = tiny
    m = get(name)
    from efflm.finetune.hooks import hooks_for

    if m.family in ("finetune", "distill") and hooks_for(default_config(name)).output == "model":
        from tests.finetune.conftest import perturb

        out_model = m.apply(model, default_config(name), None)
        perturb(out_model)  # a trained model is saved whole, as any model
        hooks_for(default_config(name)).finish(out_model)  # as the training loop ends (LLM-QAT packs)
        save(out_model, tok, tmp_path / "m")
        back, _ = load(str(tmp_path / "m"))
        assert torch.equal(back(tiny_ids).logits, out_model(tiny_ids).logits)
        return
    if m.family in ("finetune", "distill"):  # adapters are saved in peft's format (tests/finetune)
        from efflm.finetune.peft_files import load_adapter, save_adapter
        from efflm.models.tiny import tiny_llama
        from tests.finetune.conftest import perturb

        cfg = default_config(name)
        out_model = m.apply(model, cfg, None)
        cfg = getattr(hooks_for(cfg), "adapter_config", None) or cfg  # distillation trains a LoRA
        perturb(out_model)
        getattr(sys.modules[m.apply.__module__], "set_rank", lambda *a: None)(
            out_model, getattr(cfg, "save_rank", 0) or 4
        )
        save_adapter(out_model, cfg, tmp_path / "a", {})
        back, _ = load_adapter(tiny_llama()[0].eval(), tmp_path / "a")
        assert torch.equal(back(tiny_ids).logits, out_model(tiny_ids).logits)
        return
    calib = torch.randint(3, 259, (4, 64), generator=torch.Generator().manual_seed(0)) if m.needs_calibration else None
    out_model = m.apply(model, m.config_cls(), calib)
    save(out_model, tok, tmp_path / "m", recipes.to_yaml([m.config_cls()]))
    back, _ = load(str(tmp_path / "m"))
    assert torch.equal(back(tiny_ids).logits, out_model(tiny_ids).logits)


@pytest.mark.parametrize("name", DATA)
def test_every_data_method_runs_on_real_text(name, tiny):
    """One result per text, in order, and the same on a second run (seeded, no hidden state)."""
    from efflm.data_methods.context import DataContext
    from efflm.datasets.text import paragraphs

    m = get(name)
    texts = paragraphs("eval")[:12]
    reads = getattr(m.config_cls, "reads", "text")
    if reads == "pair":
        texts = [(t[:80], t[80:200]) for t in texts]
    if reads == "prompt":
        from efflm.data_methods.prompt_parts import PromptParts

        texts = [PromptParts("Answer.", t[:300], "Who?") for t in texts[:3]]
    if reads == "icl":
        from efflm.data_methods.calibrate_before_use import ICLItem

        texts = [ICLItem(f"Input: {t[:60]}\nLabel:", ("Input: N/A\nLabel:",)) for t in texts[:3]]
    ctx = DataContext(*tiny, target=paragraphs("eval")[20:26], pool=paragraphs("eval")[30:40], labels=[" yes", " no"])
    out = list(m.apply(texts, m.config_cls(), ctx))
    assert len(out) == len(texts)
    assert list(m.apply(texts, m.config_cls(), ctx)) == out
