"""K-quant blocks written from efflm's lattice grids: gguf's own dequantizer gives back efflm's
weights bit for bit; methods choose the lattice; llama.cpp computes what efflm computes."""

import numpy as np
import pytest
import torch

from efflm.core.errors import ConfigError, EfflmError
from efflm.io.gguf_kquants import kquant_for, pack
from efflm.nn.codes import dequantize
from efflm.nn.superblocks import KQUANTS
from efflm.quantize import grid
from tests.nn.test_superblocks import weights

gguf = pytest.importorskip("gguf")


@pytest.mark.parametrize("name", sorted(KQUANTS))
def test_blocks_dequantize_to_efflms_weights_exactly(name):
    kq = KQUANTS[name]
    w = weights()
    s, o = grid.grid(w, kq.bits, kq.group_size, kq.symmetric, name)
    q = grid.quantize(w, s, o, kq.bits, kq.group_size)
    data = pack(name, q, s, o)
    qtype = gguf.GGMLQuantizationType[name]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    assert data.shape == (w.shape[0], w.shape[1] // block * size)
    back = gguf.quants.dequantize(data, qtype)
    assert np.array_equal(back, dequantize(q, s, o, kq.bits, kq.group_size).numpy())
    assert kquant_for(kq.bits, kq.group_size, kq.symmetric, w.shape[1], s, o) is kq
    free = grid.grid(w, kq.bits, kq.group_size, kq.symmetric)
    assert kquant_for(kq.bits, kq.group_size, kq.symmetric, w.shape[1], *free) is None


def test_lattice_costs_little_against_free_scales():
    w = weights(32, 1024)
    for name, kq in KQUANTS.items():
        errs = []
        for kind in ("free", name):
            s, o = grid.grid(w, kq.bits, kq.group_size, kq.symmetric, kind)
            deq = dequantize(grid.quantize(w, s, o, kq.bits, kq.group_size), s, o, kq.bits, kq.group_size)
            errs.append(((deq - w) ** 2).sum().item())
        assert errs[1] < 1.1 * errs[0], (name, errs)


def test_configs_check_the_k_quants_shape():
    from efflm.methods import config_from_dict

    with pytest.raises(ConfigError, match="Q6_K is 6-bit, group_size 16, symmetric true"):
        config_from_dict({"method": "gptq", "scales": "Q6_K"})
    with pytest.raises(ConfigError, match="scales must be one of"):
        config_from_dict({"method": "rtn", "scales": "Q4_K_M"})
    with pytest.raises(ConfigError, match="int_zero_point is for asymmetric"):
        config_from_dict({"method": "awq", "scales": "int_zero_point"})


def k_config(vocab: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)  # fmt: skip


def test_model_check_names_the_linears_a_super_block_does_not_fit():
    from efflm.methods import config_from_dict, get
    from efflm.models.tiny import tiny_config

    cfg = config_from_dict({"method": "rtn", "bits": 4, "group_size": 32, "symmetric": False, "scales": "Q4_K"})
    with pytest.raises(ConfigError, match=r"multiples of 256; .*q_proj.* \(fits: none"):
        get("rtn").check(tiny_config(), cfg)
    get("rtn").check(k_config(300), cfg)  # 256-wide everywhere
    down = {
        "method": "rtn",
        "bits": 4,
        "group_size": 32,
        "symmetric": False,
        "scales": "Q4_K",
        "targets": ["re:.*down_proj"],
    }
    small = tiny_config()  # 64 wide, down_proj 128: nothing fits
    with pytest.raises(ConfigError, match=r"mlp.down_proj is not"):
        get("rtn").check(small, config_from_dict(down))


@pytest.mark.engines
@pytest.mark.parametrize(
    "name,method", [(n, "rtn") for n in sorted(KQUANTS)] + [("Q4_K", "gptq"), ("Q6_K", "gptq")]
)  # GPTQ on one asymmetric and one symmetric lattice
def test_llama_cpp_logits_match_efflm_on_k_quant_codes(name, method, tmp_path):
    pytest.importorskip("llama_cpp")
    from transformers import AutoModelForCausalLM

    from efflm import pipeline
    from efflm.core.recipe import from_yaml
    from tests.io.test_gguf_llama_cpp import cosines, greedy_agrees
    from tests.io.test_gguf_vocab import PRE, trained

    kq = KQUANTS[name]
    tok = trained(PRE["llama-bpe"]())
    with torch.random.fork_rng():
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(k_config(len(tok))).save_pretrained(tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")
    step = (f"- method: {method}\n  bits: {kq.bits}\n  group_size: {kq.group_size}\n"
            f"  symmetric: {str(kq.symmetric).lower()}\n  scales: {name}\n")  # fmt: skip
    if method == "gptq":
        step += "  act_order: false\n"  # the lattice's static grids without act-order
    model, tok = pipeline.load_and_apply(str(tmp_path / "hf"), from_yaml(step), calib_samples=8, calib_len=64)
    cos, ids, llm = cosines(model, tok, tmp_path / "k.gguf", "K-quant super-blocks hold the same codes.")
    assert cos.min() > 0.999, cos
    greedy_agrees(model, llm, ids)
    types = {t.tensor_type.name for t in gguf.GGUFReader(tmp_path / "k.gguf").tensors if t.name.startswith("blk.")}
    assert types == {name, "F32"}  # every Linear in the K-quant, norms in F32


def test_gguf_export_refuses_a_grid_without_a_block_type_in_one_line(tmp_path):
    from efflm.io import gguf_export
    from efflm.methods import config_from_dict

    with pytest.raises(EfflmError, match="has no llama.cpp block type.*or scales Q4_K"):
        gguf_export.check_recipe([config_from_dict({"method": "rtn", "bits": 6, "group_size": 32})])
    gguf_export.check_recipe([config_from_dict({"method": "rtn", "bits": 6, "group_size": 16, "scales": "Q6_K"})])


@pytest.mark.engines
def test_mxfp4_grids_run_in_llama_cpp_as_mxfp4_blocks(tmp_path):
    """ZeroQuant-FP's E2M1 weights with power-of-two group scales are llama.cpp's MXFP4 blocks."""
    pytest.importorskip("llama_cpp")
    from efflm import pipeline
    from efflm.core.recipe import from_yaml
    from tests.io.test_gguf_llama_cpp import cosines, greedy_agrees, hf_dir

    step = "- method: zeroquant_fp\n  weight_format: e2m1\n  group_size: 32\n  pow2_scales: true\n  act_format: none\n"
    model, tok = pipeline.load_and_apply(str(hf_dir("tiny-llama", tmp_path / "hf")), from_yaml(step))
    cos, ids, llm = cosines(model, tok, tmp_path / "f.gguf", "Four-bit floats with a shared exponent per block.")
    assert cos.min() > 0.999, cos
    greedy_agrees(model, llm, ids)
    types = {t.tensor_type.name for t in gguf.GGUFReader(tmp_path / "f.gguf").tensors if t.name.startswith("blk.")}
    assert types == {"MXFP4", "F32"}
    from efflm.io import gguf_export
    from efflm.methods import config_from_dict

    with pytest.raises(EfflmError, match="llama.cpp's FP4 is MXFP4"):
        gguf_export.check_recipe([config_from_dict({"method": "zeroquant_fp", "weight_format": "e2m1"})])
