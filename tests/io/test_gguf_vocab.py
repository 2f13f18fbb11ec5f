"""GGUF files from Hugging Face models: tokenizer metadata (efflm.io.gguf_vocab) and each family's
hyperparameters and tensor names; llama.cpp's own reading of them is in test_gguf_llama_cpp.py."""

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from efflm.core.errors import EfflmError
from efflm.io import gguf_export, gguf_vocab
from efflm.models.tiny import tiny_model, tiny_spec_config

TEXT = (
    "It's 2026 and we'll test 12345 tokens: don't split 3.14159 wrongly!\n\n"
    "Héllo wörld — naïve café, 東京 and 🙂 emoji.\tTabs and    spaces.\r\n"
    "The quick brown fox jumps over the lazy dog 42 times; they've said I'd go.\n"
)


def _split(pattern: str) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


PRE = {
    "gpt-2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False),
    "smollm": lambda: pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    ),
    "llama-bpe": lambda: _split(gguf_vocab._LLAMA3),
    "qwen2": lambda: _split(gguf_vocab._QWEN2),
}


def trained(pre: pre_tokenizers.PreTokenizer, vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on TEXT (deterministic) with ``pre`` splitting its input."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TEXT] * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.mark.parametrize("name", sorted(PRE))
def test_each_known_pre_tokenizer_gets_llama_cpps_name(name):
    tok = trained(PRE[name]())
    kv = gguf_vocab.tokenizer_kv(tok, len(tok))
    assert kv["add_tokenizer_model"] == "gpt2" and kv["add_tokenizer_pre"] == name
    assert kv["add_token_list"][:3] == ["<unk>", "<s>", "</s>"] and kv["add_token_types"][:3] == [3, 3, 3]
    assert set(kv["add_token_types"][3:]) == {1}
    assert len(kv["add_token_merges"]) == len(tok) - 3 - 256 and all(" " in m for m in kv["add_token_merges"])
    assert (kv["add_bos_token_id"], kv["add_eos_token_id"], kv["add_unk_token_id"]) == (1, 2, 0)
    assert kv["add_add_bos_token"] is False and kv["add_add_eos_token"] is False


def test_rows_past_the_tokenizer_are_unused_pad_tokens_and_added_tokens_keep_their_kind():
    tok = trained(PRE["gpt-2"]())
    tok.add_tokens(["<tool>"])  # added, not special
    n = len(tok)
    kv = gguf_vocab.tokenizer_kv(tok, n + 2)
    assert kv["add_token_list"][n - 1 :] == ["<tool>", f"[PAD{n}]", f"[PAD{n + 1}]"]
    assert kv["add_token_types"][n - 1 :] == [4, 5, 5]
    with pytest.raises(EfflmError, match="ids up to"):
        gguf_vocab.tokenizer_kv(tok, n - 1)


def test_chat_template_pad_id_and_a_merge_free_tokenizer():
    tok = trained(PRE["gpt-2"]())
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tok.pad_token = "</s>"
    kv = gguf_vocab.tokenizer_kv(tok, len(tok))
    assert kv["add_chat_template"] == tok.chat_template and kv["add_pad_token_id"] == 2
    _, tiny_tok = tiny_model("tiny-llama")  # bytes only: llama.cpp's BPE cannot load it
    with pytest.raises(EfflmError, match="needs merges"):
        gguf_vocab.tokenizer_kv(tiny_tok, len(tiny_tok))


def hf_model(spec: str, tok, seed: int = 0):
    """``spec``'s architecture (its tiny shape, random weights) with ``tok``'s vocabulary."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(tiny_spec_config(spec, len(tok))).eval()


@pytest.mark.parametrize(
    "pre,pattern",
    [
        (pre_tokenizers.Whitespace(), "without ByteLevel"),
        (
            pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.ByteLevel(use_regex=False)]),
            "Whitespace",
        ),
        (
            pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=False), pre_tokenizers.ByteLevel()]),
            "Digits",
        ),
        (_split(r"\p{L}+|\s+"), "matches none"),
        (pre_tokenizers.Metaspace(), "SentencePiece"),
    ],
)
def test_pre_tokenizers_llama_cpp_would_split_otherwise_are_refused(pre, pattern):
    tok = trained(pre, vocab_size=300)
    with pytest.raises(EfflmError, match=pattern):
        gguf_vocab.tokenizer_kv(tok, len(tok))


def _fields(path):
    import gguf

    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}, reader


@pytest.mark.parametrize("spec,arch", [("tiny-llama", "llama"), ("tiny-qwen3", "qwen3")])
def test_gguf_of_a_hugging_face_model_carries_its_config_and_tokenizer(spec, arch, tmp_path):
    tok = trained(PRE["qwen2"]())
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    model = hf_model(spec, tok)
    cfg = model.config
    fields, reader = _fields(gguf_export.export(model, None, tmp_path / "m.gguf", tok))
    assert fields["general.architecture"] == arch
    assert (fields[f"{arch}.block_count"], fields[f"{arch}.embedding_length"]) == (2, cfg.hidden_size)
    assert fields[f"{arch}.feed_forward_length"] == cfg.intermediate_size
    assert (fields[f"{arch}.attention.head_count"], fields[f"{arch}.attention.head_count_kv"]) == (4, 2)
    assert fields[f"{arch}.attention.key_length"] == 16 and fields[f"{arch}.context_length"] == 1024
    assert fields[f"{arch}.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.rms_norm_eps)
    assert fields["tokenizer.ggml.tokens"] == list(gguf_vocab.tokenizer_kv(tok, cfg.vocab_size)["add_token_list"])
    assert fields["tokenizer.chat_template"] == tok.chat_template
    names = {t.name for t in reader.tensors}
    assert ("blk.1.attn_q_norm.weight" in names) == (arch == "qwen3")
    assert {"token_embd.weight", "output_norm.weight", "blk.1.ffn_down.weight"} <= names


def test_gguf_of_tiny_llama_reads_back_in_transformers(tmp_path):
    tok = trained(PRE["gpt-2"]())
    model = hf_model("tiny-llama", tok)
    gguf_export.export(model, None, tmp_path / "m.gguf", tok)
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32)
    ids = torch.tensor([tok("The GGUF file holds the same model.")["input_ids"]])
    with torch.no_grad():
        ours, theirs = model(ids).logits, back(ids).logits
    # F16 Linears: the difference is fp16 rounding of the weights
    assert torch.nn.functional.cosine_similarity(ours.flatten(), theirs.flatten(), dim=0) > 0.9999


@pytest.mark.parametrize(
    "spec,pattern", [("tiny-gemma3", "slides the window on 5 of every 6"), ("tiny-mistral", "no sliding window")]
)
def test_gguf_refuses_models_llama_cpp_would_run_differently(spec, pattern, tmp_path):
    tok = trained(PRE["gpt-2"]())
    model = hf_model(spec, tok)
    with pytest.raises(EfflmError, match=pattern):
        gguf_export.export(model, None, tmp_path / "m.gguf", tok)
    assert not list(tmp_path.iterdir())


def test_rope_scaling_is_refused():
    cfg = tiny_spec_config("tiny-llama")
    cfg.rope_parameters = {"rope_type": "llama3", "rope_theta": 500000.0}
    with pytest.raises(EfflmError, match="rope scaling 'llama3'"):
        gguf_export.check_model(cfg)


def test_gemma2_windows_must_follow_llama_cpps_alternation():
    cfg = tiny_spec_config("tiny-gemma2")
    assert gguf_export.check_model(cfg) == "gemma2"  # sliding, full: llama.cpp's pattern
    cfg.layer_types = ["full_attention", "sliding_attention"]
    with pytest.raises(EfflmError, match="slides the window on 1 of every 2 layers"):
        gguf_export.check_model(cfg)
