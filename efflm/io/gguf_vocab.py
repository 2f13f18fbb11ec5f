"""GGUF tokenizer metadata from a Hugging Face tokenizer, as llama.cpp's converter writes it.

For a byte-level BPE tokenizer (GPT-2's scheme: SmolLM, Llama 3, Qwen 2/3 and efflm's tiny
models) the file gets ``tokenizer.ggml.model = "gpt2"``, every token by id (a gap in the ids
becomes ``[PAD<id>]``), its type (a special added token is CONTROL, another added token
USER_DEFINED, the rest NORMAL), the merges, the special-token ids, whether BOS/EOS are added,
the chat template, and ``tokenizer.ggml.pre``: the name under which llama.cpp knows the
pre-tokenizer's split rules. llama.cpp's converter finds that name from a hash of the
tokenizer's output on a fixed text; here it is read from the pre-tokenizer's own description in
``tokenizer.json`` (``PRE_TOKENIZERS``), and a pre-tokenizer llama.cpp would split differently
is refused rather than written under a near name. SentencePiece tokenizers (Llama 2, Mistral,
Gemma) are refused: their scores live in ``tokenizer.model``, which this writer does not read.
"""

from __future__ import annotations

import json
from typing import Any

from efflm.core.errors import EfflmError

# tokenizers' regex of Llama 3's and Qwen 2's Split pre-tokenizers (followed by a regex-free ByteLevel)
_LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2 = _LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")

# a pre-tokenizer's shape (see ``_shape``) -> llama.cpp's name for the same splitting
PRE_TOKENIZERS: dict[tuple, str] = {
    (("ByteLevel", True),): "gpt-2",  # GPT-2's regex inside ByteLevel
    (("Digits", True), ("ByteLevel", True)): "smollm",  # every digit alone, then GPT-2's regex
    (("Split", _LLAMA3), ("ByteLevel", False)): "llama-bpe",
    (("Split", _QWEN2), ("ByteLevel", False)): "qwen2",
}
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5  # gguf.TokenType


def _shape(pre: dict | None) -> tuple:
    """The parts of a ``tokenizer.json`` pre-tokenizer that decide where text splits."""
    if pre is None:
        return ()
    steps = pre["pretokenizers"] if pre["type"] == "Sequence" else [pre]
    out = []
    for step in steps:
        kind = step["type"]
        if kind == "ByteLevel":
            out.append((kind, bool(step.get("use_regex", True))))
        elif kind == "Digits":
            out.append((kind, bool(step.get("individual_digits"))))
        elif kind == "Split":
            pattern = step.get("pattern", {})
            out.append((kind, pattern.get("Regex", pattern.get("String"))))
        else:
            out.append((kind, json.dumps(step, sort_keys=True)))
    return tuple(out)


def _pre_name(spec: dict) -> str:
    shape = _shape(spec.get("pre_tokenizer"))
    if shape not in PRE_TOKENIZERS:
        kinds = " + ".join(k for k, _ in shape) or "none"
        raise EfflmError(
            f"GGUF export: the tokenizer's pre-tokenizer ({kinds}) matches none that llama.cpp knows "
            f"efflm can name ({', '.join(PRE_TOKENIZERS.values())})"
        )
    return PRE_TOKENIZERS[shape]


def _merges(model: dict) -> list[str]:
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]


def tokenizer_kv(tok: Any, vocab_size: int) -> dict[str, Any]:
    """GGUF tokenizer fields (``GGUFWriter`` method name -> value) for a fast ``tok`` whose model
    has ``vocab_size`` embedding rows."""
    if not getattr(tok, "is_fast", False):
        raise EfflmError("GGUF export needs a fast (tokenizer.json) tokenizer")
    spec = json.loads(tok.backend_tokenizer.to_str())
    model = spec["model"]
    if model["type"] != "BPE" or not any(k == "ByteLevel" for k, _ in _shape(spec.get("pre_tokenizer"))):
        raise EfflmError(
            f"GGUF export writes byte-level BPE tokenizers (GPT-2's scheme); this one is {model['type']} "
            "without ByteLevel (SentencePiece-style tokenizers are not written yet)"
        )
    pre = _pre_name(spec)
    if not model.get("merges"):
        raise EfflmError(
            "GGUF export: llama.cpp's BPE needs merges and this tokenizer has none (a bytes-only vocabulary)"
        )
    vocab = tok.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    if max(by_id) >= vocab_size:
        raise EfflmError(f"GGUF export: the tokenizer has ids up to {max(by_id)}, the model {vocab_size} rows")
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_size):
        a = added.get(i)
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        types.append(UNUSED if i not in by_id else NORMAL if a is None else CONTROL if a["special"] else USER_DEFINED)
    probe = tok("a")["input_ids"]
    bare = tok("a", add_special_tokens=False)["input_ids"]
    kv: dict[str, Any] = {
        "add_tokenizer_model": "gpt2",
        "add_tokenizer_pre": pre,
        "add_token_list": tokens,
        "add_token_types": types,
        "add_token_merges": _merges(model),
        "add_add_bos_token": tok.bos_token_id is not None and probe[:1] == [tok.bos_token_id] != bare[:1],
        "add_add_eos_token": tok.eos_token_id is not None and probe[-1:] == [tok.eos_token_id] != bare[-1:],
    }
    for kind in ("bos", "eos", "unk", "pad"):
        tid = getattr(tok, f"{kind}_token_id", None)
        if tid is not None:
            kv[f"add_{kind}_token_id"] = tid
    if getattr(tok, "chat_template", None):
        kv["add_chat_template"] = tok.chat_template
    return kv
