"""Exports of the default model that other engines load: GGUF (llama.cpp) and compressed-tensors."""

import math

import numpy as np
import pytest
import torch
from smol_helpers import SEQ, WINDOWS, apply_steps

from efflm.cli import main
from efflm.eval.metrics import perplexity
from efflm.io.gguf_export import export
from efflm.models.sources import smollm2_gguf

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rtn4(smol):
    return apply_steps([{"method": "rtn", "bits": 4, "group_size": 32}])


@pytest.fixture(scope="module")
def gguf_file(rtn4, tmp_path_factory):
    return export(rtn4, smollm2_gguf(), tmp_path_factory.mktemp("gguf") / "w4.gguf")


def llama_cpp_ppl(path, ids, seq_len, windows):
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=seq_len, n_threads=2, logits_all=True, verbose=False)
    nll, n = 0.0, 0
    for w in range(windows):
        x = ids[w * seq_len : (w + 1) * seq_len].tolist()
        llm.reset()
        llm.eval(x)
        logp = torch.log_softmax(torch.tensor(np.array(llm.scores[:seq_len]), dtype=torch.float64), -1)
        nll -= logp[:-1].gather(1, torch.tensor(x[1:])[:, None]).sum().item()
        n += seq_len - 1
    return math.exp(nll / n), llm


def test_gguf_q4_0_runs_in_llama_cpp_within_1_percent(smol, rtn4, gguf_file):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make test`")
    _, _, ids = smol
    ours = perplexity(rtn4, ids, SEQ, WINDOWS)["ppl"]
    theirs, llm = llama_cpp_ppl(gguf_file, ids, SEQ, WINDOWS)
    assert abs(theirs / ours - 1) < 0.01, (ours, theirs)
    prompt = "The capital of France is"
    text = llm(prompt, max_tokens=8, temperature=0)["choices"][0]["text"]
    first = rtn4(torch.tensor([llm.tokenize(prompt.encode(), add_bos=False)])).logits[0, -1].argmax().item()
    # llama.cpp's greedy continuation starts with the token efflm's own greedy step picks from the
    # same 4-bit codes (one of 49,152: garbage output would not)
    assert llm.tokenize(text.encode(), add_bos=False)[0] == first, (text, first)


def test_gguf_reads_back_in_transformers_with_the_same_weights(rtn4, gguf_file):
    # transformers undoes the q/k row permutation on load: equal weights prove the layout
    from transformers import AutoModelForCausalLM

    back = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    ours = rtn4.model.layers[3].self_attn
    for name in ("q_proj", "k_proj", "v_proj"):
        assert torch.equal(
            getattr(back.model.layers[3].self_attn, name).weight, getattr(ours, name).dequantize(torch.float32)
        )


def test_compressed_tensors_checkpoint_loads_in_transformers(smol, rtn4, tmp_path):
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM

    from efflm.io.compressed_tensors import export as ct_export

    _, tok, ids = smol
    out = ct_export(rtn4, tok, tmp_path / "ct")
    back = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    x = ids[:128][None]
    a, b = rtn4(x).logits, back(x).logits
    assert (a - b).abs().max() < 0.05 * a.abs().max(), (a - b).abs().max()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.99
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    assert size < 0.4 * 538e6, size  # packed int4 + fp16 embedding, against 538 MB of fp32


def test_cli_gguf_export_refuses_a_grid_llama_cpp_lacks(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("- method: gptq\n  bits: 4\n  group_size: 64\n")
    assert main(["compress", "--recipe", str(recipe), "--format", "gguf", "--out", str(tmp_path / "x.gguf")]) == 2
    assert "Q4_0" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.gguf*"))


def test_k_quant_rows_come_from_llama_cpp_itself(smol, ppl, tmp_path):
    """benchmarks/quant_bits.py's anchor path: the dense model exported, quantized by llama.cpp's
    own llama_model_quantize to Q4_K_M, read back as k-quant tensors and scored by llama.cpp."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make test`")
    import importlib.util
    from pathlib import Path

    from gguf import GGMLQuantizationType, GGUFReader

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "quant_bits.py"
    spec = importlib.util.spec_from_file_location("bench_quant_bits", path)
    qb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(qb)
    model, _, ids = smol
    dense = export(model, smollm2_gguf(), tmp_path / "dense.gguf")
    q = qb.k_quant(dense, "Q4_K_M", tmp_path, threads=2)
    types = {t.name: t.tensor_type for t in GGUFReader(q).tensors}
    assert types["blk.0.ffn_down.weight"] in (GGMLQuantizationType.Q4_K, GGMLQuantizationType.Q6_K)  # 1536 inputs
    assert types["token_embd.weight"] == GGMLQuantizationType.Q8_0  # as the benchmark asks
    row = qb.llama_cpp_row(q, "Q4_K_M", ids, SEQ, WINDOWS, threads=2)
    assert 4 < row["linear_bpw"] < 6 and row["model_bpw"] > 4
    assert "Q4_K" in row["stored_as"] and row["stored_as"].count("×") >= 2  # k-quants and fallbacks
    assert 1.0 < row["ppl"] / ppl[0] < 1.3, (row, ppl[0])  # 4-bit k-quants: close to dense, not equal


def test_tokenizer_metadata_from_the_hugging_face_files_equals_the_original_gguf():
    """The default model's tokenizer.json (converted by transformers from its GGUF) written back as
    GGUF metadata gives the original file's tokens, token types and merges."""
    import gguf

    from efflm.io.gguf_vocab import tokenizer_kv
    from efflm.models.sources import load_tokenizer

    fields = gguf.GGUFReader(smollm2_gguf()).fields
    kv = tokenizer_kv(load_tokenizer("smollm2-135m"), 49152)
    assert kv["add_token_list"] == fields["tokenizer.ggml.tokens"].contents()
    assert kv["add_token_types"] == fields["tokenizer.ggml.token_type"].contents()
    assert kv["add_token_merges"] == fields["tokenizer.ggml.merges"].contents()
