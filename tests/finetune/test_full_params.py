"""Full-parameter fine-tuning (AdamW, LOMO, AdaLomo, MeZO) through ``efflm finetune``: the whole
model is saved and loads, a pruned model keeps its zeros, resume equals an uninterrupted run."""

import pytest
import torch
import yaml
from safetensors.torch import load_file

from efflm import trainer
from efflm.core import recipe as recipes
from efflm.io.load import load
from efflm.methods import config_from_dict
from efflm.models.tiny import tiny_llama

TRAIN = {"steps": 3, "batch": 2, "seq_len": 64, "lr": 1e-3, "checkpoint_every": 1, "max_grad_norm": 0.0}
FULL = ["full", "lomo", "adalomo", "mezo"]


def recipe_file(tmp_path, method: str, **fields):
    p = tmp_path / f"{method}.yaml"
    p.write_text(yaml.safe_dump({"method": method, **fields, "train": {**TRAIN, **fields.pop("train", {})}}))
    return trainer.read_method_recipe(p)


def weights(path):
    files = sorted(path.glob("*.safetensors"))
    return {k: v for f in files for k, v in load_file(str(f)).items()}


@pytest.mark.parametrize("name", FULL)
def test_a_full_parameter_run_saves_the_whole_model_and_changes_every_matrix(name, tmp_path):
    cfg, train_cfg = recipe_file(tmp_path, name)
    r = trainer.finetune("tiny-llama", [], cfg, train_cfg, "domain", tmp_path / "o", db=tmp_path / "r.sqlite")
    base = {k: v for k, v in tiny_llama()[0].state_dict().items()}
    trained, _ = load(str(tmp_path / "o" / "model"))
    changed = [k for k, v in trained.state_dict().items() if k in base and not torch.equal(v, base[k])]
    matrices = [k for k, v in base.items() if v.dim() == 2]
    assert set(matrices) <= set(changed)  # every weight matrix trained, none merely adapted
    assert r["trainable_params"] == sum(p.numel() for p in trained.parameters())
    assert not (tmp_path / "o" / "adapter_config.json").exists() and (tmp_path / "o" / "loss.png").is_file()


@pytest.mark.parametrize("name", FULL)
def test_a_pruned_model_keeps_its_zeros(name, tmp_path):
    prune = [config_from_dict({"method": "magnitude", "sparsity": 0.5, "pattern": "2:4"})]
    cfg, train_cfg = recipe_file(tmp_path, name)
    trainer.finetune("tiny-llama", prune, cfg, train_cfg, "domain", tmp_path / "o")
    w = weights(tmp_path / "o" / "model")
    q = next(v for k, v in w.items() if k.endswith("layers.0.self_attn.q_proj.weight"))
    assert (q.reshape(-1, 4) == 0).sum(-1).eq(2).all()  # still exactly 2:4
    emb = next(v for k, v in w.items() if k.endswith("embed_tokens.weight"))
    assert (emb != 0).all()  # a dense matrix is not masked


@pytest.mark.parametrize("name", [*FULL, "mezo-lora"])
def test_resume_equals_the_uninterrupted_run(name, tmp_path):
    method, fields = (name, {}) if name != "mezo-lora" else ("mezo", {"over": "lora", "r": 4})
    cfg, train_cfg = recipe_file(tmp_path, method, **fields)
    full = trainer.finetune("tiny-llama", [], cfg, train_cfg, "domain", tmp_path / "a")
    trainer.finetune("tiny-llama", [], cfg, train_cfg, "domain", tmp_path / "b", stop_at=2)
    resumed = trainer.finetune("tiny-llama", [], cfg, train_cfg, "domain", tmp_path / "b", resume=True)
    assert resumed["losses"] == full["losses"]
    sub = "model" if method != "mezo" or not fields else "."
    a, b = weights(tmp_path / "a" / sub), weights(tmp_path / "b" / sub)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_mezo_over_lora_trains_and_saves_only_the_adapter(tmp_path):
    cfg, train_cfg = recipe_file(tmp_path, "mezo", over="lora", r=4)
    r = trainer.finetune("tiny-llama", [], cfg, train_cfg, "domain", tmp_path / "o")
    assert (tmp_path / "o" / "adapter_config.json").is_file() and not (tmp_path / "o" / "model").exists()
    assert 0 < r["trainable_params"] < 20_000
    lora = weights(tmp_path / "o")
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in lora.items())  # B moved off zero


def test_lomo_refuses_gradient_accumulation_and_mezo_a_full_method(tmp_path):
    from efflm.core.errors import ConfigError, EfflmError

    cfg, train_cfg = recipe_file(tmp_path, "lomo", train={"grad_accum": 2})
    with pytest.raises(ConfigError, match="grad_accum must be 1"):
        trainer.finetune("tiny-llama", [], cfg, train_cfg, "domain", tmp_path / "o")
    with pytest.raises(EfflmError, match="over must be"):
        bad = config_from_dict({"method": "mezo", "over": "lomo"})
        trainer.finetune("tiny-llama", [], bad, train_cfg, "domain", tmp_path / "o")
    assert not (tmp_path / "o").exists()
    assert recipes.label([cfg]).startswith("lomo")
