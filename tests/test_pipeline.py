"""Layer-streamed compression (efflm.pipeline with efflm.models.streaming): the same result as the
whole-model path, bit for bit, for every layerwise method; one layer in memory at a time."""

import json

import pytest
import torch
from safetensors.torch import load_file

from efflm import pipeline
from efflm.core.errors import EfflmError
from efflm.io.load import load
from efflm.io.save import save
from efflm.methods import config_from_dict, methods

LAYERWISE = sorted(m.name for m in methods() if m.layerwise)


def write_tiny(path, spec="tiny-llama"):
    from efflm.models.tiny import tiny_model

    model, tok = tiny_model(spec)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("tiny") / "model")


def tensors(path):
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_the_layerwise_methods_are_the_calibrating_and_per_linear_quantizers_and_pruners():
    assert {"gptq", "awq", "smoothquant", "sparsegpt", "wanda", "spqr", "quip", "rtn", "magnitude", "nf4"} <= set(
        LAYERWISE
    )
    whole = {m.name for m in methods() if m.family in ("quantize", "prune") and not m.layerwise}
    assert "llm_pruner" in whole and "squeezellm" in whole  # gradients through the whole model


@pytest.mark.parametrize(
    "spec", ["tiny-qwen3", "tiny-gemma2", "tiny-gemma3", "tiny-phi3", "tiny-opt", "tiny-mixtral", "tiny-qwen2-moe"]
)
@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_streamed_equals_whole_on_every_family(spec, method, tmp_path, monkeypatch):
    """Each family's computed buffers (RoPE tables, Gemma's embedding scale) are rebuilt, not read;
    Phi-3's fused rows are read as Llama's tensors; a MoE block's experts are read one Linear at a
    time under the checkpoint's names (Mixtral's ``block_sparse_moe.experts.{e}.w1``)."""
    test_streamed_output_equals_the_whole_model_output_bit_for_bit(
        method, write_tiny(tmp_path / spec, spec), tmp_path, monkeypatch
    )


@pytest.mark.parametrize("method", LAYERWISE)
def test_streamed_output_equals_the_whole_model_output_bit_for_bit(method, tiny_dir, tmp_path, monkeypatch):
    recipe = [config_from_dict({"method": method})]
    assert pipeline.streams(tiny_dir, recipe)
    seconds = pipeline.compress_streamed(tiny_dir, recipe, tmp_path / "streamed", 4, 32)
    assert sorted(seconds) == [0, 1]
    with monkeypatch.context() as m:
        m.setattr(pipeline, "streams", lambda *a: False)
        model, tok = pipeline.load_and_apply(tiny_dir, recipe, 4, 32)
    save(model, tok, tmp_path / "whole")
    a, b = tensors(tmp_path / "streamed"), tensors(tmp_path / "whole")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)

    def meta(p):
        name = "efflm.json" if (p / "efflm.json").exists() else "efflm-recipe.json"
        return json.loads((p / name).read_text())

    assert meta(tmp_path / "streamed")["modules"] == meta(tmp_path / "whole")["modules"]
    x = torch.randint(3, 200, (1, 12))
    torch.testing.assert_close(load(str(tmp_path / "streamed"))[0](x).logits, model(x).logits, rtol=0, atol=0)


def test_only_one_layer_is_in_memory_while_streaming(tiny_dir, tmp_path, monkeypatch):
    import efflm.models.streaming as streaming

    resident, trims = [], []
    monkeypatch.setattr(streaming, "trim_heap", lambda: trims.append(1))  # the freed layer's pages go back

    def sink(i, layer, model):
        layers = model.model.layers
        resident.append(sum(not layers[j].input_layernorm.weight.is_meta for j in range(len(layers))))
        assert model.model.embed_tokens.weight.is_meta and model.lm_head.weight.is_meta  # re-read at the end
        return True

    model, _ = pipeline.load_and_apply(tiny_dir, [config_from_dict({"method": "rtn"})], sink=sink)
    assert resident == [1, 1] and len(trims) == 2
    whole, _ = load(tiny_dir)
    assert torch.equal(model.model.embed_tokens.weight, whole.model.embed_tokens.weight)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_a_multi_step_layerwise_recipe_streams_and_keeps_its_layers(tiny_dir):
    recipe = [config_from_dict({"method": "wanda", "sparsity": 0.5}), config_from_dict({"method": "rtn"})]
    streamed, _ = pipeline.load_and_apply(tiny_dir, recipe, 4, 32)
    assert not hasattr(streamed, "efflm_stream")
    whole, _ = load(tiny_dir)
    for cfg in recipe:
        whole = pipeline.get(cfg.method).apply(whole, cfg, streamed_calib(tiny_dir))
    x = torch.randint(3, 200, (1, 12))
    assert torch.equal(streamed(x).logits, whole(x).logits)


def streamed_calib(path):
    from efflm.datasets.calib_file import calib_windows
    from efflm.models.sources import load_tokenizer

    return calib_windows(load_tokenizer(path), 4, 32, None, seed=0)


def test_a_missing_shard_or_tensor_is_one_line_before_any_layer_is_read(tiny_dir, tmp_path):
    import shutil

    from safetensors.torch import save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    state = load_file(str(broken / "model.safetensors"))
    del state["model.layers.1.mlp.down_proj.weight"]
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(EfflmError, match="'model.layers.1.mlp.down_proj.weight' is missing"):
        pipeline.compress_streamed(str(broken), [config_from_dict({"method": "rtn"})], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (broken / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}})
    )
    with pytest.raises(EfflmError, match="shard model-00002-of-00002.safetensors named by .* is missing"):
        pipeline.compress_streamed(str(broken), [config_from_dict({"method": "rtn"})], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_whole_model_method_past_the_memory_there_is_says_so_before_loading(tiny_dir, monkeypatch):
    import efflm.core.memory as memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 1000)
    with pytest.raises(EfflmError, match=r"llm_pruner needs the whole model in memory: .* GB in float32"):
        pipeline.load_and_apply(tiny_dir, [config_from_dict({"method": "llm_pruner"})], 4, 32)
