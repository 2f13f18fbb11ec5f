import numpy as np
import pytest
import torch

from efflm.core.errors import EfflmError
from efflm.io import compressed_tensors, gguf_blocks, gguf_export
from efflm.methods import config_from_dict, get
from efflm.quantize import grid


@pytest.mark.parametrize("grid_key", sorted(gguf_blocks.BLOCKS))
def test_gguf_blocks_are_exact_for_the_gguf_dequantizer(grid_key):
    import gguf

    bits, symmetric = grid_key
    name, write = gguf_blocks.BLOCKS[grid_key]
    w = torch.randn(6, 128, generator=torch.Generator().manual_seed(bits))
    w[0, :32] = 0.0  # a group of zeros (scale 1 by convention)
    scales, offsets = grid.grid(w, bits, 32, symmetric)
    codes = grid.quantize(w, scales, offsets, bits, 32)
    assert int(codes.max()) >= 2 ** (bits - 1)  # the top bit is used (Q5's qh carries it)
    blocks = write(codes, scales, offsets)
    qtype = gguf.GGMLQuantizationType[name]
    block_bytes, block_size = gguf.GGML_QUANT_SIZES[qtype][1], gguf.GGML_QUANT_SIZES[qtype][0]
    assert block_size == 32 and blocks.shape == (6, 4 * block_bytes)
    want = grid.dequantize(codes, scales, offsets, bits, 32).numpy()
    assert np.array_equal(gguf.quants.dequantize(blocks, qtype), want)


def test_rope_permute_is_undone_by_transformers_gguf_loader():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = torch.randn(8 * 3, 5)  # 3 heads of dim 8
    p = gguf_export.rope_permute(w, 3)
    assert not torch.equal(p, w)
    back = LlamaTensorProcessor(config={})._reverse_permute_weights(p.numpy(), 3, 3)
    assert np.array_equal(back, w.numpy())


def test_gguf_export_refuses_other_grids_and_a_missing_tokenizer(tiny, tmp_path):
    model, _ = tiny
    with pytest.raises(EfflmError, match="needs the model's tokenizer"):
        gguf_export.export(model, None, tmp_path / "x.gguf")
    with pytest.raises(EfflmError, match="no llama.cpp block type; with group_size 32: Q4_0"):
        gguf_export.check_recipe([config_from_dict({"method": "rtn", "bits": 3, "group_size": 32})])
    with pytest.raises(EfflmError, match="activations"):
        gguf_export.check_recipe([config_from_dict({"method": "smoothquant"})])
    assert not list(tmp_path.iterdir())


@pytest.mark.engines
@pytest.mark.parametrize("bits,group_size", [(4, 32), (8, -1), (3, 64)])
def test_compressed_tensors_round_trip_on_tiny(tiny, tiny_ids, tmp_path, bits, group_size):
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM

    model, tok = tiny
    model = get("rtn").apply(model, config_from_dict({"method": "rtn", "bits": bits, "group_size": group_size}))
    out = compressed_tensors.export(model, tok, tmp_path / "ct")
    back = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    torch.testing.assert_close(back(tiny_ids).logits, model(tiny_ids).logits, rtol=0, atol=5e-3)
    ours = model.model.layers[1].mlp.down_proj.dequantize(torch.float32)  # decompressed on first forward
    torch.testing.assert_close(back.model.layers[1].mlp.down_proj.weight.float(), ours, rtol=1e-3, atol=1e-6)


@pytest.mark.engines
def test_compressed_tensors_refuses_asymmetric_and_unquantized(tiny, tmp_path):
    pytest.importorskip("compressed_tensors")
    model, tok = tiny
    with pytest.raises(EfflmError, match="quantized model"):
        compressed_tensors.export(model, tok, tmp_path / "a")
    asym = get("rtn").apply(model, config_from_dict({"method": "rtn", "bits": 4, "symmetric": False, "group_size": 32}))
    with pytest.raises(EfflmError, match="float offsets with no integer zero point; quantize with scales: int_zero"):
        compressed_tensors.export(asym, tok, tmp_path / "b")
    with pytest.raises(EfflmError, match="use scales: int_zero_point"):
        compressed_tensors.check_recipe([config_from_dict({"method": "gptq", "symmetric": False})])
    assert not list(tmp_path.iterdir())


@pytest.mark.engines
@pytest.mark.parametrize("method,bits,group_size", [("rtn", 4, 32), ("gptq", 8, -1), ("awq", 4, 64)])
def test_integer_zero_points_export_as_asymmetric_groups(method, bits, group_size, tmp_path):
    """``scales: int_zero_point`` grids: the file holds efflm's codes and zero points (the library
    packs both), the library's own decompression gives back efflm's weights, and transformers
    computes efflm's logits."""
    pytest.importorskip("compressed_tensors")
    import json

    from transformers import AutoModelForCausalLM

    from efflm import pipeline
    from efflm.core.recipe import from_yaml
    from efflm.nn.module_registry import efflm_modules

    step = f"- method: {method}\n  bits: {bits}\n  group_size: {group_size}\n  symmetric: false\n  scales: int_zero_point\n"
    model, tok = pipeline.load_and_apply("tiny-llama", from_yaml(step), calib_samples=8, calib_len=64)
    out = compressed_tensors.export(model, tok, tmp_path / "ct")
    weights = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"][
        "weights"
    ]
    assert weights["symmetric"] is False and weights["num_bits"] == bits
    back = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = torch.randint(3, 259, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, model(ids).logits, rtol=0, atol=5e-3)
    for name, m in efflm_modules(model, "weight_grid").items():  # decompressed by the first forward
        assert torch.equal(back.get_submodule(name).weight.float(), m.dequantize(torch.float32)), name


@pytest.mark.engines
@pytest.mark.parametrize("recipe", ["- method: w8a8\n", "- method: smoothquant\n"])
def test_w8a8_exports_as_int8_weights_and_dynamic_token_activations(recipe, tmp_path):
    """W8A8 and SmoothQuant become compressed-tensors' int-quantized scheme: the file's int8
    weights are efflm's, and transformers (quantizing activations per token itself) gives
    efflm's logits within one activation rounding step."""
    pytest.importorskip("compressed_tensors")
    import json

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from efflm import pipeline
    from efflm.core.recipe import from_yaml
    from efflm.nn.module_registry import efflm_modules

    model, tok = pipeline.load_and_apply("tiny-llama", from_yaml(recipe))
    out = compressed_tensors.export(model, tok, tmp_path / "ct")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    scheme = qc["config_groups"]["group_0"]
    assert qc["format"] == "int-quantized" and scheme["weights"]["strategy"] == "channel"
    assert scheme["input_activations"]["strategy"] == "token" and scheme["input_activations"]["dynamic"]
    stored = load_file(out / "model.safetensors")
    for name, m in efflm_modules(model, "w8a8").items():
        assert torch.equal(stored[f"{name}.weight"], m.qweight)
        assert torch.equal(stored[f"{name}.weight_scale"].flatten(), m.wscale.half())
    back = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = torch.randint(3, 259, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, theirs = model(ids).logits, back(ids).logits
    assert torch.nn.functional.cosine_similarity(ours.flatten(), theirs.flatten(), dim=0) > 0.9999
    torch.testing.assert_close(theirs, ours, rtol=0, atol=2e-2)


@pytest.mark.engines
@pytest.mark.parametrize("act", ["e4m3", "none"])
def test_fp8_exports_as_float8_channel_weights(act, tmp_path):
    """ZeroQuant-FP's E4M3 weights with channel scales become the float-quantized scheme: the file's
    float8 weights are efflm's codes; transformers' logits are efflm's (activations rounded to FP8
    per token on both sides when the model has them)."""
    pytest.importorskip("compressed_tensors")
    import json

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from efflm.nn.module_registry import efflm_modules

    model, tok = tiny_model_fresh()
    cfg = {"method": "zeroquant_fp", "weight_format": "e4m3", "group_size": -1, "act_format": act}
    model = get("zeroquant_fp").apply(model, config_from_dict(cfg))
    out = compressed_tensors.export(model, tok, tmp_path / "ct")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    scheme = qc["config_groups"]["group_0"]
    assert qc["format"] == "float-quantized" and scheme["weights"]["type"] == "float"
    assert (scheme["input_activations"] is None) == (act == "none")
    stored = load_file(out / "model.safetensors")
    for name, m in efflm_modules(model, "fp_grid").items():
        assert stored[f"{name}.weight"].dtype == torch.float8_e4m3fn
        assert torch.equal(stored[f"{name}.weight"].view(torch.uint8), m.codes())
    back = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = torch.randint(3, 259, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, theirs = model(ids).logits, back(ids).logits
    torch.testing.assert_close(theirs, ours, rtol=0, atol=2e-2)
    with pytest.raises(EfflmError, match="one scale per output channel"):
        compressed_tensors.check_recipe([config_from_dict({**cfg, "group_size": 32})])


def tiny_model_fresh():
    from efflm.io.load import load

    return load("tiny-llama")


def test_compressed_tensors_refuses_outlier_columns():
    with pytest.raises(EfflmError, match="llm_int8 has no compressed-tensors scheme"):
        compressed_tensors.check_recipe([config_from_dict({"method": "llm_int8"})])
    compressed_tensors.check_recipe([config_from_dict({"method": "w8a8"})])  # accepted


@pytest.mark.engines
def test_mixed_schemes_export_one_config_group_each(tmp_path):
    """SmoothQuant W8A8 on attention, GPTQ W4 g32 on the MLP's gate/up, W8 per channel on down_proj and
    the last layer left dense: one config group per scheme (mixed-precision), each module's codes the
    file's, transformers computing efflm's logits."""
    pytest.importorskip("compressed_tensors")
    import json

    from transformers import AutoModelForCausalLM

    from efflm import pipeline
    from efflm.core.recipe import from_yaml

    recipe = from_yaml(
        "- {method: smoothquant, targets: ['re:.*self_attn.*']}\n"
        "- {method: gptq, bits: 4, group_size: 32, targets: ['re:.*mlp.(gate|up)_proj'], ignore: ['re:.*layers.1.mlp.*']}\n"
        "- {method: rtn, bits: 8, group_size: -1, targets: ['re:.*layers.0.mlp.down_proj']}\n"
    )
    model, tok = pipeline.load_and_apply("tiny-llama", recipe, calib_samples=8, calib_len=64)
    out = compressed_tensors.export(model, tok, tmp_path / "ct")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["format"] == "mixed-precision"
    groups = {g["format"]: g for g in qc["config_groups"].values()}
    assert len(qc["config_groups"]) == 3 and set(groups) == {"int-quantized", "pack-quantized"}
    packed = [g for g in qc["config_groups"].values() if g["format"] == "pack-quantized"]
    assert sorted(g["weights"]["num_bits"] for g in packed) == [4, 8]
    targets = [t for g in qc["config_groups"].values() for t in g["targets"]]
    assert "model.layers.0.self_attn.q_proj" in targets and not any("layers.1.mlp" in t for t in targets)
    back = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = torch.randint(3, 259, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, model(ids).logits, rtol=0, atol=2e-2)


@pytest.mark.engines
@pytest.mark.parametrize(
    "spec",
    ["tiny-qwen3", "tiny-gemma2", "tiny-gemma3", "tiny-phi3", "tiny-mixtral", "tiny-qwen2-moe", "tiny-qwen3-moe",
     "tiny-opt", "tiny-gpt2"],
)  # fmt: skip
def test_compressed_tensors_of_every_family_loads_in_plain_transformers(spec, tmp_path):
    """Each family's export loads with transformers' own class (Phi-3 as the Llama efflm reads it as)
    and gives efflm's dequantized logits (GPT-2 as the OPT it is read as). MoE experts are written one Linear each, under the names
    the family's checkpoints use (Mixtral: ``block_sparse_moe.experts.{e}.w1/w3/w2``), which
    transformers decompresses and stacks (keeping them in the file's fp16: cast here)."""
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM

    from efflm.io.load import load

    model, tok = load(spec)
    model = get("rtn").apply(model, config_from_dict({"method": "rtn", "bits": 4, "group_size": 32}))
    out = compressed_tensors.export(model, tok, tmp_path / "ct")
    back = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    for p in back.parameters():
        p.data = p.data.float() if p.is_floating_point() else p.data
    ids = torch.randint(3, 259, (1, 16), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(back(ids).logits, model(ids).logits, rtol=0, atol=5e-3)
    if spec == "tiny-mixtral":
        from safetensors import safe_open

        with safe_open(str(out / "model.safetensors"), "pt") as f:
            assert "model.layers.0.block_sparse_moe.experts.3.w2.weight_packed" in set(f.keys())


FP4 = {
    "mxfp4-pack-quantized": ({"group_size": 32, "pow2_scales": True}, torch.uint8),  # E8M0 exponents
    "nvfp4-pack-quantized": ({"group_size": 16, "e4m3_scales": True}, torch.float8_e4m3fn),  # ÷ a global 2^k
}


@pytest.mark.engines
@pytest.mark.parametrize("fmt", sorted(FP4))
def test_fp4_exports_as_e2m1_codes_with_their_scale_format(fmt, tmp_path):
    """ZeroQuant-FP's E2M1 weights with power-of-two scales per 32 (MXFP4) or E4M3 scales per 16 under
    one power of two (NVFP4); the library's decompression gives back efflm's weights exactly; an FP4
    grid with free fp16 scales is refused."""
    pytest.importorskip("compressed_tensors")
    import json

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from efflm.nn.module_registry import efflm_modules

    extra, scale_dtype = FP4[fmt]
    cfg = {"method": "zeroquant_fp", "weight_format": "e2m1", "group_size": extra["group_size"], "act_format": "none"}
    with pytest.raises(EfflmError, match="MXFP4 as E2M1 weights in groups of 32 with power-of-two scales"):
        compressed_tensors.check_recipe([config_from_dict(cfg)])
    model, tok = tiny_model_fresh()
    free = get("zeroquant_fp").apply(model, config_from_dict(cfg))
    with pytest.raises(EfflmError, match="q_proj is neither FP8 .* nor MXFP4 .* nor NVFP4"):
        compressed_tensors.export(free, tok, tmp_path / "free")
    model, tok = tiny_model_fresh()
    model = get("zeroquant_fp").apply(model, config_from_dict({**cfg, **extra}))
    out = compressed_tensors.export(model, tok, tmp_path / "ct")
    assert json.loads((out / "config.json").read_text())["quantization_config"]["format"] == fmt
    stored = load_file(out / "model.safetensors")
    assert stored["model.layers.0.mlp.down_proj.weight_scale"].dtype == scale_dtype
    back = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)  # transformers computes FP4 in bf16
    ids = torch.randint(3, 259, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(model(ids).logits.flatten(), back(ids).logits.float().flatten(), 0)
    assert cos > 0.9999
    for n, m in efflm_modules(model, "fp_grid").items():  # bf16 holds every such weight exactly
        assert torch.equal(back.get_submodule(n).weight.float(), m.dequantize(torch.float32)), n
    assert not (tmp_path / "free").exists()


def test_nvfp4_scales_are_e4m3_values_under_one_power_of_two():
    from efflm.core.errors import ConfigError
    from efflm.nn.fp_formats import e4m3_scales, global_e4m3_scale

    s = torch.rand(8, 4) * 0.1 + torch.tensor([0.0, 1e-6, 0.01, 0.05])
    q = e4m3_scales(s)
    g = global_e4m3_scale(q.half())
    assert g is not None and torch.equal(q.half().float(), q)  # fp16 holds them
    assert torch.equal((q * g).to(torch.float8_e4m3fn).float(), q * g) and (q * g).max() <= 448
    assert ((q - s).abs() <= s / 8 + 2.0**-9 / g).all()  # E4M3: 3 mantissa bits
    assert global_e4m3_scale((s + 1e-3).half()) is None  # free fp16 scales
    with pytest.raises(ConfigError, match="choose one"):
        config_from_dict({"method": "zeroquant_fp", "pow2_scales": True, "e4m3_scales": True})


@pytest.mark.engines
@pytest.mark.parametrize("bits,group_size,fmt", [(8, -1, "int-quantized"), (4, 32, "pack-quantized")])
def test_zeroquant_exports_with_dynamic_token_activations(bits, group_size, fmt, tmp_path):
    """ZeroQuant's grids with per-token activations: W8A8 per channel is vLLM's int8 scheme, W4A8 packs
    the weights; transformers quantizes activations per token itself (its grid is max|x|/127.5)."""
    pytest.importorskip("compressed_tensors")
    import json

    from transformers import AutoModelForCausalLM

    from efflm import pipeline
    from efflm.core.recipe import from_yaml

    step = f"- method: zeroquant\n  bits: {bits}\n  group_size: {group_size}\n  act_bits: 8\n  lkd_steps: 0\n"
    model, tok = pipeline.load_and_apply("tiny-llama", from_yaml(step), calib_samples=4, calib_len=32)
    out = compressed_tensors.export(model, tok, tmp_path / "ct")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    scheme = qc["config_groups"]["group_0"]
    assert qc["format"] == fmt and scheme["weights"]["num_bits"] == bits
    assert scheme["input_activations"]["strategy"] == "token" and scheme["input_activations"]["dynamic"]
    back = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = torch.randint(3, 259, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, theirs = model(ids).logits, back(ids).logits
    assert torch.nn.functional.cosine_similarity(ours.flatten(), theirs.flatten(), dim=0) > 0.9999
