"""GGUF files written from Hugging Face models run in llama.cpp (llama-cpp-python): the tokenizer
splits text into transformers' ids, and logits match efflm's on the same codes, for every block type."""

import numpy as np
import pytest
import torch

from efflm import pipeline
from efflm.cli import main
from efflm.core.recipe import from_yaml
from efflm.io import gguf_export
from efflm.io.gguf_blocks import BLOCKS
from tests.io.test_gguf_vocab import PRE, TEXT, hf_model, trained

pytestmark = pytest.mark.engines
llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make test`")

PROBES = [
    TEXT,
    "I'd've said 1234567890 isn't 3.50 €.",
    "  leading spaces,\n\n\ttabs and CRLF\r\n",
    "ALL CAPS'LL Don'T 'S",
    "mixed中文和English123",
]


def _llama(path, **kw):
    return llama_cpp.Llama(model_path=str(path), verbose=False, n_threads=2, **kw)


@pytest.mark.parametrize("name", sorted(PRE))
def test_llama_cpp_tokenizes_like_transformers(name, tmp_path):
    tok = trained(PRE[name]())
    model = hf_model("tiny-llama", tok)
    path = gguf_export.export(model, None, tmp_path / "m.gguf", tok)
    llm = _llama(path, vocab_only=True)
    for text in PROBES:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids, text
        assert llm.detokenize(ids).decode() == text


def cosines(model, tok, path, text: str):
    """Export ``model`` to the GGUF ``path``, score ``text`` in llama.cpp and in efflm: the per-position
    cosine of the two logits, the prompt's ids and the llama.cpp model."""
    gguf_export.export(model, None, path, tok)
    ids = tok(text)["input_ids"]
    llm = _llama(path, n_ctx=64, logits_all=True)
    llm.eval(ids)
    theirs = torch.tensor(np.array(llm.scores[: len(ids)]))
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0]
    return torch.nn.functional.cosine_similarity(ours, theirs, dim=-1), ids, llm


def hf_dir(spec: str, path):
    """A Hugging Face directory of ``spec``'s architecture with a trained byte-level BPE tokenizer."""
    tok = trained(PRE["qwen2" if "qwen" in spec else "gpt-2" if "gpt2" in spec else "llama-bpe"]())
    hf_model(spec, tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize(
    "spec",
    ["tiny-llama", "tiny-qwen3", "tiny-phi3", "tiny-gemma2", "tiny-mixtral", "tiny-qwen2-moe", "tiny-qwen3-moe",
     "tiny-gpt2"],
)  # fmt: skip
@pytest.mark.parametrize("bits,symmetric", sorted(BLOCKS), ids=[BLOCKS[k][0] for k in sorted(BLOCKS)])
def test_llama_cpp_logits_match_efflm_on_the_same_codes(spec, bits, symmetric, tmp_path):
    """Every family llama.cpp runs (a MoE block's experts stacked into llama.cpp's 3-D tensors, its
    router in F32; GPT-2, read as OPT, written back as llama.cpp's gpt2 with one attn_qkv)."""
    recipe = from_yaml(f"- method: rtn\n  bits: {bits}\n  symmetric: {str(symmetric).lower()}\n  group_size: 32\n")
    model, tok = pipeline.load_and_apply(str(hf_dir(spec, tmp_path / "hf")), recipe)
    text = "The GGUF file holds the same 4-bit model, token for token."
    cos, ids, llm = cosines(model, tok, tmp_path / "m.gguf", text)
    if "moe" in spec or "mixtral" in spec:  # llama.cpp's 8-bit activations may flip a near-tied expert choice
        assert cos.min() > 0.99 and (cos > 0.999).float().mean() >= 0.9, cos
    else:
        assert cos.min() > 0.999, cos
    greedy_agrees(model, llm, ids)


def greedy_agrees(model, llm, ids: list[int]) -> None:
    """llama.cpp's 16 greedy tokens are efflm's greedy picks, but for near-ties: llama.cpp rounds
    activations to 8 bits in its dot products, which may flip a pick whose margin in efflm's
    logits is a few thousandths of their range (random tiny models have many)."""
    llm.reset()
    got = [t for _, t in zip(range(16), llm.generate(ids, temp=0.0))]
    with torch.no_grad():
        logits = model(torch.tensor([ids + got])).logits[0, len(ids) - 1 : -1]
    gap = logits.max(-1).values - logits.gather(1, torch.tensor(got)[:, None])[:, 0]
    spread = logits.max(-1).values - logits.min(-1).values
    assert (gap <= 0.005 * spread).all(), gap / spread
    assert (gap == 0).float().mean() >= 0.75  # most picks are exactly efflm's


@pytest.mark.parametrize("scaling", [None, 8.0])
def test_gemma3_with_llama_cpps_window_pattern_runs_in_llama_cpp(scaling, tmp_path):
    """Gemma 3 as llama.cpp fixes it: five sliding-window layers, then a global one; local RoPE at
    base 10000, the global layers' base (and linear scaling, as Gemma 3 4B+ have) from the file."""
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    from efflm.methods import config_from_dict, get

    tok = trained(PRE["llama-bpe"]())
    kinds = ["sliding_attention"] * 5 + ["full_attention"]
    rope = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}}  # fmt: skip
    if scaling:
        rope["full_attention"] = {"rope_type": "linear", "rope_theta": 1000000.0, "factor": scaling}
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                           layer_types=kinds, sliding_window=4, rope_parameters=rope, max_position_embeddings=1024,
                           bos_token_id=1, eos_token_id=2, pad_token_id=2)  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg).eval()
    for n, p in model.named_parameters():
        if "norm" in n:  # Gemma's norms scale by 1 + w: random w makes the test see them
            p.data.normal_(0.0, 0.05)
    model = get("rtn").apply(model, config_from_dict({"method": "rtn", "bits": 8, "group_size": 32}))
    text = "Sliding windows of four tokens, then one global layer sees the whole line."
    cos, _, _ = cosines(model, tok, tmp_path / "g.gguf", text)
    # a window one token off gives cosine ~0.2, a wrong local/global pattern ~0.87; what remains is
    # llama.cpp's f16 KV cache and GELU table under Gemma 3's normalized (sharper) attention
    assert cos.min() > 0.99 and cos.mean() > 0.999, cos


def test_cli_writes_a_gguf_from_a_hugging_face_directory(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("- method: rtn\n  group_size: 32\n")
    out = tmp_path / "q.gguf"
    model = str(hf_dir("tiny-qwen3", tmp_path / "hf"))
    assert main(["compress", "--model", model, "--recipe", str(recipe), "--format", "gguf", "--out", str(out)]) == 0
    llm = _llama(out, n_ctx=32)
    assert llm.metadata["general.architecture"] == "qwen3" and llm.metadata["tokenizer.ggml.pre"] == "qwen2"
    from transformers import AutoConfig, AutoTokenizer

    assert llm.n_vocab() == AutoConfig.from_pretrained(model).vocab_size == len(AutoTokenizer.from_pretrained(model))
