"""Planted near-duplicates: copies of real documents edited at a known rate, the ground truth
that deduplication's precision and recall are measured against (tests and
``benchmarks/dedup_quality.py``).

An edit is one of: swap two adjacent words, insert a word drawn from the document, delete a
word, re-case a word. ``round(rate × words)`` edits are made (at least one when rate > 0), at
positions drawn from a seeded generator.
"""

from __future__ import annotations

import random

EDITS = ("swap", "insert", "delete", "recase")


def edit(text: str, rate: float, rng: random.Random) -> str:
    """A copy of ``text`` with ``round(rate × words)`` random word edits (rate 0: an exact copy)."""
    w = text.split()
    if rate <= 0 or len(w) < 2:
        return text
    for _ in range(max(1, round(rate * len(w)))):
        kind = rng.choice(EDITS)
        i = rng.randrange(len(w) - 1)
        if kind == "swap":
            w[i], w[i + 1] = w[i + 1], w[i]
        elif kind == "insert":
            w.insert(i, rng.choice(w))
        elif kind == "delete" and len(w) > 2:
            del w[i]
        else:
            w[i] = w[i].upper() if w[i] != w[i].upper() else w[i].lower()
    return " ".join(w)


def plant(
    docs: list[str], share: float, rates: tuple[float, ...], seed: int = 0
) -> tuple[list[str], list[tuple[int, float] | None]]:
    """``docs`` with edited copies of a ``share`` of them inserted at random later positions.
    Returns the texts and, per text, None for an original or ``(index of the document it copies
    in the returned list, edit rate)``. Each copy's edit rate cycles through ``rates``."""
    rng = random.Random(seed)
    sources = sorted(rng.sample(range(len(docs)), round(share * len(docs))))
    slots: list[list[tuple[str, int, float]]] = [[] for _ in docs]  # copies placed after position p
    for k, s in enumerate(sources):
        r = rates[k % len(rates)]
        slots[rng.randrange(s, len(docs))].append((edit(docs[s], r, rng), s, r))
    texts: list[str] = []
    truth: list[tuple[int, float] | None] = []
    where: dict[int, int] = {}
    for p, d in enumerate(docs):
        where[p] = len(texts)
        texts.append(d)
        truth.append(None)
        for copy, s, r in slots[p]:
            texts.append(copy)
            truth.append((where[s], r))
    return texts, truth
