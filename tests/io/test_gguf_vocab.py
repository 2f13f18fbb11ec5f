"""GGUF files from Hugging Face models: tokenizer metadata (efflm.io.gguf_vocab) and each family's
hyperparameters and tensor names; llama.cpp's own reading of them is in test_gguf_llama_cpp.py, but
for SentencePiece-style vocabularies, whose llama.cpp checks are here beside their builder."""

import ctypes
import json

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
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
        (pre_tokenizers.Metaspace(), "without ByteLevel or byte_fallback"),  # SentencePiece-style, no byte fallback
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


# SentencePiece-style BPE (Llama 2, Mistral, Gemma): tokens spell spaces as "▁", byte fallback to <0xNN>

SPACE = gguf_vocab.SPACE
# words sharing pieces ("▁the" is "▁th" + "e", "▁t" + "he" and "▁" + "the"), so one token has several merges
SPM_TEXT = TEXT + (
    "There, then, the other one: these are their thoughts, whether or not they think them through. "
    "Another weather report said the heather withered; nothing else mattered to the mother or the brother. "
    "Tokens join in pairs: in, inn, inner, winner, dinner, thinner, spinning, beginning, singing, thinking.\n"
)
SPM_FORMS = {  # (normalizer, pre-tokenizer, whether the decoder strips the prefix space)
    "llama2": (lambda: normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)]), None, True),
    "metaspace-first": (None, lambda: pre_tokenizers.Metaspace(prepend_scheme="first", split=False), True),
    "metaspace-always": (None, lambda: pre_tokenizers.Metaspace(prepend_scheme="always", split=False), True),
    "gemma": (
        lambda: normalizers.Replace(" ", SPACE),
        lambda: pre_tokenizers.Split(" ", "merged_with_previous"),
        False,
    ),
}


def spm_pieces() -> list[str]:
    """A SentencePiece-style BPE's pieces trained on SPM_TEXT, in merge order (a "▁" only first, as
    SentencePiece splits at spaces)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator([SPM_TEXT] * 4, trainer)
    vocab = json.loads(tok.to_str())["model"]["vocab"]
    return [p for p, _ in sorted(vocab.items(), key=lambda kv: kv[1])][3:]


def spm_trained(form: str, merges: list | None = None, vocab: dict | None = None) -> PreTrainedTokenizerFast:
    """Llama 2's layout: <unk> <s> </s>, the 256 byte tokens, then the pieces, whose merges are
    every split of a piece into two tokens (as transformers derives them from a tokenizer.model)."""
    if vocab is None:
        vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{b:02X}>": 3 + b for b in range(256)}
        for piece in spm_pieces():
            vocab.setdefault(piece, len(vocab))
    if merges is None:
        merges = [(t[:k], t[k:]) for t in vocab for k in range(1, len(t)) if t[:k] in vocab and t[k:] in vocab]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    norm, pre, strip = SPM_FORMS[form]
    if norm:
        tok.normalizer = norm()
    if pre:
        tok.pre_tokenizer = pre()
    steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence(steps + [decoders.Strip(" ", 1, 0)] * strip)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.mark.parametrize("form", sorted(SPM_FORMS))
def test_sentencepiece_bpe_is_written_as_llama_cpps_llama_vocabulary(form):
    tok = spm_trained(form)
    kv = gguf_vocab.tokenizer_kv(tok, len(tok) + 1)
    assert (kv["add_tokenizer_model"], kv["add_tokenizer_pre"]) == ("llama", "default") and "add_token_merges" not in kv
    assert kv["add_add_space_prefix"] == (form != "gemma")
    tokens, types, scores = kv["add_token_list"], kv["add_token_types"], kv["add_token_scores"]
    assert tokens[:4] == ["<unk>", "<s>", "</s>", "<0x00>"] and tokens[-1] == f"[PAD{len(tok)}]"
    assert types[:3] == [2, 3, 3] and set(types[3:259]) == {6} and set(types[259:-1]) == {1} and types[-1] == 5
    # a merged token scores minus its first merge's rank: the merge order, as llama.cpp's SPM reads it
    ranks = {}
    for rank, (left, right) in enumerate(json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]):
        ranks.setdefault(left + right, rank)
    assert ranks and all(scores[tokens.index(t)] == -r for t, r in ranks.items())
    assert all(scores[i] == 0.0 for i, t in enumerate(tokens[:-1]) if t not in ranks) and scores[-1] == -1000.0
    assert (kv["add_bos_token_id"], kv["add_eos_token_id"], kv["add_unk_token_id"]) == (1, 2, 0)
    assert kv["add_add_bos_token"] is True and kv["add_add_eos_token"] is False


SPM_PROBES = [
    SPM_TEXT,
    "Hello world, the quick brown fox.",
    "  leading spaces,\n\n\ttabs and CRLF\r\n",
    "multiple    spaces  inside and after  ",
    "digits 1234567890 and 3.14159",
    "newlines\nonly\n\n",
    "東京 and 日本語 (no tokens: byte fallback), ß Ω",
    "emoji 🙂 and 😀🚀",
    " ",
]


def _llama_cpp(tok, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make test`")
    path = gguf_export.export(hf_model("tiny-llama", tok), None, tmp_path / "m.gguf", tok)
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)

    def detokenize(ids: list[int]) -> str:
        """llama.cpp's own detokenizer (llama-cpp-python's ``detokenize`` drops a space after a BOS
        whatever the file says)."""
        buf = ctypes.create_string_buffer(4096)
        n = llama_cpp.llama_detokenize(
            llm._model.vocab, (llama_cpp.llama_token * len(ids))(*ids), len(ids), buf, 4096, False, False
        )
        return buf.raw[:n].decode()

    return llm, detokenize


@pytest.mark.engines
@pytest.mark.parametrize("form", ["llama2", "gemma"])
def test_llama_cpp_tokenizes_sentencepiece_bpe_like_transformers(form, tmp_path):
    """Llama 2's tokenizer.json (Prepend + Replace normalizer) and Gemma's (no prefix): every text,
    leading spaces, unknown characters spelled in bytes and special tokens in the text included."""
    tok = spm_trained(form)
    llm, detokenize = _llama_cpp(tok, tmp_path)
    for text in SPM_PROBES:
        for add in (False, True):
            ids = tok(text, add_special_tokens=add)["input_ids"]
            for special in (False, True):
                assert llm.tokenize(text.encode(), add_bos=add, special=special) == ids, (text, add, special)
        bare = tok(text, add_special_tokens=False)["input_ids"]
        assert detokenize(bare) == tok.decode(bare) == text
    assert 3 + "😀".encode()[0] in tok("😀")["input_ids"]  # the probes reach the byte fallback
    text = "one</s>two <s> three"
    assert llm.tokenize(text.encode(), add_bos=True, special=True) == tok(text)["input_ids"]


@pytest.mark.engines
@pytest.mark.parametrize("scheme", ["first", "always"])
def test_llama_cpp_and_a_metaspace_tokenizer_differ_only_on_a_leading_space(scheme, tmp_path):
    """transformers' own Llama tokenizer (a Metaspace pre-tokenizer) puts no "▁" before a text that
    starts with a space; llama.cpp, like SentencePiece, always does: one space more, for llama.cpp."""
    tok = spm_trained(f"metaspace-{scheme}")
    llm, detokenize = _llama_cpp(tok, tmp_path)
    for text in SPM_PROBES:
        for add in (False, True):
            ids = tok(" " * text.startswith(" ") + text, add_special_tokens=add)["input_ids"]
            assert llm.tokenize(text.encode(), add_bos=add, special=False) == ids, (text, add)
        bare = tok(text, add_special_tokens=False)["input_ids"]
        assert detokenize(bare) == tok.decode(bare)
    assert tok(" x", add_special_tokens=False)["input_ids"] == tok("x", add_special_tokens=False)["input_ids"]


ABC = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{b:02X}>": 3 + b for b in range(256)}
ABC |= {t: len(ABC) + i for i, t in enumerate([SPACE, "a", "b", "c", "bc", "ab", "abc"])}
ABC_MERGES = [("b", "c"), ("a", "b"), ("ab", "c")]  # no ("a", "bc"): "abc" splits into a + bc


def test_sentencepiece_bpe_llama_cpp_would_tokenize_otherwise_is_refused():
    with pytest.raises(EfflmError, match="'abc' = 'a' \\+ 'bc' is no merge of this BPE"):
        gguf_vocab.tokenizer_kv(spm_trained("gemma", merges=ABC_MERGES, vocab=ABC), len(ABC))
    late = [("a", "b"), ("ab", "c"), ("b", "c"), ("a", "bc")]  # "abc"'s merges around "bc"'s
    with pytest.raises(EfflmError, match="merges making 'abc' are not consecutive \\(ranks 1 and 3\\)"):
        gguf_vocab.tokenizer_kv(spm_trained("gemma", merges=late, vocab=ABC), len(ABC))
    no_byte = {t: i for t, i in ABC.items() if t != "<0x80>"}
    with pytest.raises(EfflmError, match=r"1 are missing \(the first <0x80>\)"):
        gguf_vocab.tokenizer_kv(spm_trained("gemma", merges=ABC_MERGES + [("a", "bc")], vocab=no_byte), len(ABC))
    tok = spm_trained("llama2")
    steps = [normalizers.NFKC(), normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)]
    tok.backend_tokenizer.normalizer = normalizers.Sequence(steps)
    with pytest.raises(EfflmError, match="are NFKC \\+ Prepend \\+ Replace"):
        gguf_vocab.tokenizer_kv(tok, len(tok))
    tok.backend_tokenizer.normalizer = normalizers.Prepend(SPACE)  # spaces left as spaces
    with pytest.raises(EfflmError, match="must write spaces as"):
        gguf_vocab.tokenizer_kv(tok, len(tok))
    tok.backend_tokenizer.normalizer = None
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(split=True)  # no "▁" inside its tokens: fine
    tok.add_tokens([f"x{SPACE}y"])  # an added token, matched before any split
    assert gguf_vocab.tokenizer_kv(tok, len(tok))["add_token_types"][-1] == 4
    inner = spm_trained("gemma", merges=ABC_MERGES + [("a", "bc"), ("c", SPACE)], vocab=ABC | {f"c{SPACE}": len(ABC)})
    inner.backend_tokenizer.normalizer = None
    inner.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(split=True)  # never makes "c▁"; llama.cpp would
    with pytest.raises(EfflmError, match="splits at '▁' but the vocabulary has 'c▁'"):
        gguf_vocab.tokenizer_kv(inner, len(inner))
    unigram = Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0), ("b", -2.0)], unk_id=0, byte_fallback=False))
    with pytest.raises(EfflmError, match="Unigram"):
        gguf_vocab.tokenizer_kv(PreTrainedTokenizerFast(tokenizer_object=unigram, unk_token="<unk>"), 3)


@pytest.mark.engines
def test_the_refused_bpe_would_tokenize_otherwise_in_llama_cpp(tmp_path, monkeypatch):
    """Why a merge missing for a split is refused: llama.cpp joins a + bc into abc regardless."""
    monkeypatch.setattr(gguf_vocab, "_check_every_split_merges", lambda *_: None)
    tok = spm_trained("gemma", merges=ABC_MERGES, vocab=ABC)
    llm, _ = _llama_cpp(tok, tmp_path)
    assert tok.tokenize("abc") == ["a", "bc"]
    assert llm.tokenize(b"abc", add_bos=False, special=False) == [ABC["abc"]]
