"""Category suggestions from the nearest catalog entries: k-nearest-neighbour vote over titles.

The text encoders (MiniLM sentence embeddings, else TF-IDF) are ``efflm.datasets.embed``'s.
``leave_one_out`` measures how often the top suggestion is one of an entry's own categories.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from efflm.datasets.embed import MiniLM, TfIdf, encoder, minilm_dir, words  # noqa: F401  (re-exported)


def vote(sims: np.ndarray, labels: list[list[str]], k: int = 5) -> list[tuple[str, float]]:
    """Categories of the k most similar entries, weighted by similarity, best first."""
    scores: Counter = Counter()
    for j in np.argsort(-sims, kind="stable")[:k]:
        for c in labels[j]:
            scores[c] += float(sims[j])
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def suggest(entries: list[dict], text: str, backend: str = "auto", k: int = 5) -> tuple[str, list[tuple[str, float]]]:
    enc = encoder(backend)
    texts = [e["title"] for e in entries]
    enc.fit(texts + [text])
    vecs = enc.encode(texts + [text])
    return enc.name, vote(vecs[:-1] @ vecs[-1], [e["categories"] for e in entries], k)


def leave_one_out(entries: list[dict], backend: str = "auto", k: int = 5) -> dict:
    """Top-1 accuracy of the suggester on the catalog itself, against the majority-class baseline."""
    enc = encoder(backend)
    texts = [e["title"] for e in entries]
    labels = [e["categories"] for e in entries]
    fixed = enc.encode(texts) if isinstance(enc, MiniLM) else None
    hits = 0
    for i in range(len(entries)):
        rest = [j for j in range(len(entries)) if j != i]
        if fixed is None:  # TF-IDF is refitted without the held-out entry
            enc.fit([texts[j] for j in rest])
            vecs = enc.encode([texts[j] for j in rest] + [texts[i]])
            others, query = vecs[:-1], vecs[-1]
        else:
            others, query = fixed[rest], fixed[i]
        ranked = vote(others @ query, [labels[j] for j in rest], k)
        hits += bool(ranked) and ranked[0][0] in labels[i]
    majority, _ = Counter(c for ls in labels for c in ls).most_common(1)[0]
    baseline = sum(majority in ls for ls in labels) / len(labels)
    return {
        "backend": enc.name,
        "k": k,
        "entries": len(entries),
        "accuracy": hits / len(entries),
        "majority_category": majority,
        "majority_accuracy": baseline,
    }
