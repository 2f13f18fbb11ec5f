"""LLM-Pruner-style structured pruning: a smaller ordinary model, exact structure removal."""

import pytest
import torch

from efflm.core.errors import ConfigError
from efflm.methods import check_for_model, config_from_dict, get
from efflm.prune.llm_pruner import head_plan

CALIB = torch.randint(3, 259, (2, 64), generator=torch.Generator().manual_seed(0))


def _cfg(**kw):
    return config_from_dict({"method": "llm_pruner", "multiple_of": 8, **kw})


def _zero_structures(model):
    """Silence MLP channels 0..31 and query heads 1 and 3 (one per KV group) in every layer."""
    hd = model.config.head_dim
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate_proj.weight[:32] = 0
            layer.mlp.up_proj.weight[:32] = 0
            layer.mlp.down_proj.weight[:, :32] = 0
            for h in (1, 3):
                layer.self_attn.q_proj.weight[h * hd : (h + 1) * hd] = 0
                layer.self_attn.o_proj.weight[:, h * hd : (h + 1) * hd] = 0


@pytest.mark.parametrize("importance", ["magnitude", "taylor"])
def test_removes_exactly_the_silent_structures(tiny, tiny_ids, importance):
    model, _ = tiny
    _zero_structures(model)
    ref = model(tiny_ids).logits
    pruned = get("llm_pruner").apply(model, _cfg(ratio=0.25, head_ratio=0.5, importance=importance), CALIB)
    assert pruned.config.intermediate_size == 96 and pruned.config.num_attention_heads == 2
    assert pruned.config.num_key_value_heads == 2 and pruned.config.head_dim == 16
    layer = pruned.model.layers[0]
    assert layer.mlp.down_proj.weight.shape == (64, 96) and layer.self_attn.q_proj.weight.shape == (32, 64)
    torch.testing.assert_close(pruned(tiny_ids).logits, ref, atol=2e-5, rtol=1e-4)


def test_pruned_model_reloads_in_plain_transformers_with_the_same_logits(tiny, tiny_ids, tmp_path):
    from transformers import AutoModelForCausalLM

    from efflm.io.save import save

    model, tok = tiny
    n_before = sum(p.numel() for p in model.parameters())
    pruned = get("llm_pruner").apply(model, _cfg(ratio=0.5, head_ratio=0.5), CALIB)
    assert sum(p.numel() for p in pruned.parameters()) < n_before
    save(pruned, tok, tmp_path / "m")
    assert not (tmp_path / "m" / "efflm.json").exists()  # an ordinary Hugging Face directory
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert torch.equal(back(tiny_ids).logits, pruned(tiny_ids).logits)


def test_whole_kv_groups_go_when_per_group_removal_cannot(tiny_ids):
    """Multi-head attention (one query head per k/v head): a head can only go with its k/v."""
    from transformers import LlamaForCausalLM

    from efflm.models.tiny import tiny_config

    assert head_plan(4, 2, 2) == ("per_group", 1)
    assert head_plan(6, 3, 4) == ("groups", 2)
    cfg = tiny_config()
    cfg.num_key_value_heads = cfg.num_attention_heads  # MHA: 4 heads, 4 k/v heads
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    hd = cfg.head_dim
    with torch.no_grad():  # silence heads 1 and 3 with their keys and values
        for layer in model.model.layers:
            for h in (1, 3):
                for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    lin.weight[h * hd : (h + 1) * hd] = 0
                layer.self_attn.o_proj.weight[:, h * hd : (h + 1) * hd] = 0
    ref = model(tiny_ids).logits
    pruned = get("llm_pruner").apply(model, _cfg(ratio=0.0, head_ratio=0.5, importance="magnitude"), CALIB)
    assert pruned.config.num_attention_heads == 2 and pruned.config.num_key_value_heads == 2
    assert pruned.model.layers[0].self_attn.k_proj.weight.shape == (2 * hd, 64)
    torch.testing.assert_close(pruned(tiny_ids).logits, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "kw,pattern",
    [
        ({"head_ratio": 0.25}, "breaks GQA grouping"),
        ({"head_ratio": 0.9}, "would remove all 4 heads"),
        ({"ratio": 1.0}, r"must be in \[0, 1\)"),
        ({"ratio": 0.99}, "keeps 0 of 128"),
        ({"importance": "random"}, "importance must be"),
    ],
)
def test_bad_structured_ratios_are_refused_before_any_work(tiny, kw, pattern):
    with pytest.raises(ConfigError, match=pattern):
        check_for_model(tiny[0].config, _cfg(**kw))


def test_validation_sees_the_pruned_sizes():
    """A recipe step after structured pruning is checked against the smaller model."""
    from efflm.pipeline import validate

    recipe = [_cfg(ratio=0.25), config_from_dict({"method": "rtn", "bits": 4, "group_size": 64})]
    with pytest.raises(ConfigError, match="does not divide the input dimension 96"):
        validate("tiny-llama", recipe)
