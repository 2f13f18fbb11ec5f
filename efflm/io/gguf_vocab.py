"""GGUF tokenizer metadata from a Hugging Face tokenizer, as llama.cpp's converter writes it.

For a byte-level BPE tokenizer (GPT-2's scheme: SmolLM, Llama 3, Qwen 2/3 and efflm's tiny
models) the file gets ``tokenizer.ggml.model = "gpt2"``, every token by id (a gap in the ids
becomes ``[PAD<id>]``), its type (a special added token is CONTROL, another added token
USER_DEFINED, the rest NORMAL), the merges, the special-token ids, whether BOS/EOS are added,
the chat template, and ``tokenizer.ggml.pre``: the name under which llama.cpp knows the
pre-tokenizer's split rules. llama.cpp's converter finds that name from a hash of the
tokenizer's output on a fixed text; here it is read from the pre-tokenizer's own description in
``tokenizer.json`` (``PRE_TOKENIZERS``), and a pre-tokenizer llama.cpp would split differently
is refused rather than written under a near name.

A SentencePiece-style BPE (Llama 2, Mistral, Gemma: ``byte_fallback``, spaces spelled ``▁``)
gets the fields llama.cpp's converter writes for one from ``tokenizer.json``:
``tokenizer.ggml.model = "llama"`` (pre ``"default"``), every token with a score and a type (the
``<0xNN>`` byte tokens BYTE, the unknown token UNKNOWN), ``tokenizer.ggml.add_space_prefix``, and
the same special ids, BOS/EOS flags and template, but no merges: llama.cpp's SPM tokenizer (as
SentencePiece's BPE) joins, again and again, the adjacent pair that spells the highest-scoring
token. That is Hugging Face's BPE when a token's score is minus the rank of its first merge, the
score written here (llama.cpp's converter, lacking ``tokenizer.model``, writes -1000 for every
token: pairs would then join from the left), and when every split of a token into two tokens is
one of its merges, all consecutive in rank. A tokenizer whose merges are not so is refused, as is
one missing a byte token, a Unigram model (llama.cpp would not find its segmentation) and a
normalizer or pre-tokenizer that does more than spell spaces ``▁`` and put a ``▁`` first.

That first ``▁``: llama.cpp puts it before the text and after each special token in it, as the
``Prepend`` normalizer of Llama 2's ``tokenizer.json`` does, so those two split every text alike.
transformers' own Llama tokenizer has a ``Metaspace`` pre-tokenizer instead, which leaves the
``▁`` out before a text that starts with a space (and, with ``prepend_scheme="first"``, after a
special token): there llama.cpp, like SentencePiece itself, sees one space more. Such tokenizers
are written all the same.
"""

from __future__ import annotations

import json
import re
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
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # gguf.TokenType
SPACE = "\u2581"  # SentencePiece's "▁", which stands for a space inside its tokens
_BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")


def _steps(part: dict | None, key: str) -> list[dict]:
    if part is None:
        return []
    return [s for p in part[key] for s in _steps(p, key)] if part["type"] == "Sequence" else [part]


def _shape(pre: dict | None) -> tuple:
    """The parts of a ``tokenizer.json`` pre-tokenizer that decide where text splits."""
    out = []
    for step in _steps(pre, "pretokenizers"):
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


def _space_prefix(spec: dict) -> bool:
    """Whether a SentencePiece-style tokenizer puts ``▁`` before its text (llama.cpp's
    ``add_space_prefix``), refusing a normalizer or pre-tokenizer that does more than that and
    writing spaces as ``▁``, which is all llama.cpp's SPM tokenizer does to the text."""
    norm = _steps(spec.get("normalizer"), "normalizers")
    pre = _steps(spec.get("pre_tokenizer"), "pretokenizers")
    replace = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}
    kinds = [s["type"] for s in norm if s != replace and s != {"type": "Prepend", "prepend": SPACE}]
    escaped = replace in norm
    kinds += [s["type"] for s in pre if s["type"] != "Metaspace" and not (escaped and _noop_split(s))]
    metaspace = [s for s in pre if s["type"] == "Metaspace"]
    if kinds or len(metaspace) > 1 or (metaspace and norm) or (metaspace and metaspace[0].get("replacement") != SPACE):
        found = " + ".join(s["type"] for s in norm + pre)
        raise EfflmError(
            f"GGUF export: llama.cpp's SentencePiece tokenizer only writes spaces as '{SPACE}' and may put "
            f"one first; this tokenizer's normalizer and pre-tokenizer are {found}"
        )
    if metaspace:
        step = metaspace[0]
        scheme = step.get("prepend_scheme") or ("always" if step.get("add_prefix_space", True) else "never")
        return scheme != "never"
    if not escaped:
        found = " + ".join(s["type"] for s in norm + pre) or "none"
        raise EfflmError(
            f"GGUF export: a SentencePiece-style tokenizer must write spaces as '{SPACE}' (a Metaspace "
            f"pre-tokenizer or a Replace normalizer) for llama.cpp; this one has {found}"
        )
    return {"type": "Prepend", "prepend": SPACE} in norm


def _noop_split(step: dict) -> bool:
    """A Split on spaces, after a normalizer wrote every space as ``▁`` (Gemma's pre-tokenizer)."""
    return step["type"] == "Split" and step.get("pattern") == {"String": " "} and not step.get("invert")


def _spm_scores(model: dict, added: set[str]) -> dict[str, float]:
    """Each merged token's score for llama.cpp's SPM tokenizer: minus the rank of its first
    merge, after checking that ranking tokens so is ranking merges (``added``: the added tokens,
    which both tokenizers split text at before joining anything)."""
    vocab = model["vocab"]
    for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix", "ignore_merges"):
        if model.get(key):
            raise EfflmError(f"GGUF export: llama.cpp's SentencePiece tokenizer has no BPE {key} (this one's is set)")
    missing = [f"<0x{b:02X}>" for b in range(256) if f"<0x{b:02X}>" not in vocab]
    if missing:
        raise EfflmError(
            f"GGUF export: llama.cpp's byte fallback needs all 256 byte tokens; {len(missing)} are missing "
            f"(the first {missing[0]})"
        )
    first: dict[str, int] = {}
    pairs = set()
    last = ""
    for rank, merge in enumerate(model.get("merges", [])):
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        token = left + right
        if token != last and token in first:
            raise EfflmError(
                f"GGUF export: the merges making {token!r} are not consecutive (ranks {first[token]} and {rank}); "
                "llama.cpp's SentencePiece tokenizer ranks tokens, not merges"
            )
        first.setdefault(token, rank)
        pairs.add((left, right))
        last = token
    _check_every_split_merges(vocab, pairs, added)
    return {token: -float(rank) for token, rank in first.items()}


def _check_every_split_merges(vocab: dict[str, int], pairs: set[tuple[str, str]], added: set[str]) -> None:
    """Refuse a BPE whose merges leave out a split of a token into two others: llama.cpp's SPM
    tokenizer would join that pair (as SentencePiece does), Hugging Face's BPE keeps it apart."""
    for token in vocab:
        if _BYTE_TOKEN.fullmatch(token) or token in added:
            continue
        for k in range(1, len(token)):
            left, right = token[:k], token[k:]
            if left in vocab and right in vocab and (left, right) not in pairs and not {left, right} & added:
                raise EfflmError(
                    f"GGUF export: {token!r} = {left!r} + {right!r} is no merge of this BPE, but llama.cpp's "
                    "SentencePiece tokenizer joins any two tokens that spell a third"
                )


def _spm_kv(tok: Any, spec: dict, vocab_size: int) -> dict[str, Any]:
    model = spec["model"]
    prefix = _space_prefix(spec)
    pre = _steps(spec.get("pre_tokenizer"), "pretokenizers")
    if any(s["type"] == "Metaspace" and s.get("split", True) for s in pre):
        inner = next((t for t in model["vocab"] if SPACE in t[1:]), None)
        if inner is not None:  # Metaspace splits before each ▁; llama.cpp does not split
            raise EfflmError(
                f"GGUF export: the Metaspace pre-tokenizer splits at '{SPACE}' but the vocabulary has {inner!r}, "
                "which llama.cpp's SentencePiece tokenizer (no split) would use"
            )
    scores = _spm_scores(model, {a["content"] for a in spec.get("added_tokens", [])})
    unk = tok.unk_token_id

    def kind(i: int, token: str, added: dict | None) -> int:
        if i == unk:
            return UNKNOWN
        if _BYTE_TOKEN.fullmatch(token) and model["vocab"].get(token) == i:
            return BYTE
        return NORMAL if added is None else CONTROL if added["special"] else USER_DEFINED

    tokens, types = _tokens(tok, spec, vocab_size, kind)
    kv = {
        "add_tokenizer_model": "llama",
        "add_tokenizer_pre": "default",
        "add_token_list": tokens,
        # llama.cpp's converter gives added (USER_DEFINED) and padding tokens -1000; they never join
        "add_token_scores": [
            scores.get(t, 0.0) if k == NORMAL else -1000.0 if k in (USER_DEFINED, UNUSED) else 0.0
            for t, k in zip(tokens, types)
        ],
        "add_token_types": types,
        "add_add_space_prefix": prefix,
    }
    return kv | _specials(tok)


def _tokens(tok: Any, spec: dict, vocab_size: int, kind) -> tuple[list[str], list[int]]:
    """Every row's token (``[PAD<id>]`` past the tokenizer's ids) and its ``kind(id, token,
    added-token entry or None)``."""
    vocab = tok.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    if max(by_id) >= vocab_size:
        raise EfflmError(f"GGUF export: the tokenizer has ids up to {max(by_id)}, the model {vocab_size} rows")
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_size):
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        types.append(UNUSED if i not in by_id else kind(i, by_id[i], added.get(i)))
    return tokens, types


def _specials(tok: Any) -> dict[str, Any]:
    """Special-token ids, whether BOS/EOS are added (seen on a probe) and the chat template."""
    probe = tok("a")["input_ids"]
    bare = tok("a", add_special_tokens=False)["input_ids"]
    kv: dict[str, Any] = {
        "add_add_bos_token": tok.bos_token_id is not None and probe[:1] == [tok.bos_token_id] != bare[:1],
        "add_add_eos_token": tok.eos_token_id is not None and probe[-1:] == [tok.eos_token_id] != bare[-1:],
    }
    for name in ("bos", "eos", "unk", "pad"):
        tid = getattr(tok, f"{name}_token_id", None)
        if tid is not None:
            kv[f"add_{name}_token_id"] = tid
    if getattr(tok, "chat_template", None):
        kv["add_chat_template"] = tok.chat_template
    return kv


def tokenizer_kv(tok: Any, vocab_size: int) -> dict[str, Any]:
    """GGUF tokenizer fields (``GGUFWriter`` method name -> value) for a fast ``tok`` whose model
    has ``vocab_size`` embedding rows."""
    if not getattr(tok, "is_fast", False):
        raise EfflmError("GGUF export needs a fast (tokenizer.json) tokenizer")
    spec = json.loads(tok.backend_tokenizer.to_str())
    model = spec["model"]
    byte_level = any(k == "ByteLevel" for k, _ in _shape(spec.get("pre_tokenizer")))
    if model["type"] == "Unigram":
        raise EfflmError(
            "GGUF export: the tokenizer is a Unigram model; llama.cpp's SentencePiece tokenizer joins pairs "
            "by score (BPE) and would not find Unigram's segmentation"
        )
    if model["type"] == "BPE" and model.get("byte_fallback") and not byte_level:
        return _spm_kv(tok, spec, vocab_size)
    if model["type"] != "BPE" or not byte_level:
        raise EfflmError(
            f"GGUF export writes byte-level BPE tokenizers (GPT-2's scheme) and SentencePiece-style BPE with "
            f"byte_fallback; this one is {model['type']} without ByteLevel or byte_fallback"
        )
    pre = _pre_name(spec)
    if not model.get("merges"):
        raise EfflmError(
            "GGUF export: llama.cpp's BPE needs merges and this tokenizer has none (a bytes-only vocabulary)"
        )

    def kind(i: int, token: str, added: dict | None) -> int:
        return NORMAL if added is None else CONTROL if added["special"] else USER_DEFINED

    tokens, types = _tokens(tok, spec, vocab_size, kind)
    kv: dict[str, Any] = {
        "add_tokenizer_model": "gpt2",
        "add_tokenizer_pre": pre,
        "add_token_list": tokens,
        "add_token_types": types,
        "add_token_merges": _merges(model),
    }
    return kv | _specials(tok)
