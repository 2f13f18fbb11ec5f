"""Text normalization and word n-gram shingles, shared by the deduplication methods.

``normalize`` is what "the same text" means for exact deduplication (Unicode NFKC, case
folded, whitespace runs collapsed); ``shingles`` are the word n-grams MinHash estimates the
Jaccard similarity of (punctuation dropped: a word is a run of letters or digits).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

_WORD = re.compile(r"\w+")
_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def text_key(text: str) -> bytes:
    """A 16-byte digest of the normalized text: equal for texts that differ only in case,
    Unicode form or whitespace."""
    return hashlib.blake2b(normalize(text).encode("utf-8"), digest_size=16).digest()


def words(text: str) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def shingles(text: str, n: int) -> set[bytes]:
    """The set of word n-grams (a text shorter than n words is one shingle; an empty text none)."""
    w = words(text)
    if len(w) <= n:
        return {" ".join(w).encode("utf-8")} if w else set()
    return {" ".join(w[i : i + n]).encode("utf-8") for i in range(len(w) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0
