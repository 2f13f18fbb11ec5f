"""Deduplication: exact is idempotent and keeps first occurrences; MinHash finds planted near
duplicates in real text with stated precision and recall."""

import random

import pytest

from efflm.core.errors import ConfigError
from efflm.data_methods import dedup
from efflm.data_methods.plant import edit, plant
from efflm.data_methods.shingles import jaccard, normalize, shingles
from efflm.datasets.text import paragraphs


def run(texts, **kw):
    return list(dedup.apply(texts, dedup.DedupConfig(**kw)))


def test_exact_keeps_first_occurrences_and_is_idempotent():
    texts = ["Hello  world", "another", "hello world", "HELLO WORLD\n", "another", "third"]
    out = run(texts, mode="exact")
    assert out == [None, None, 0, 0, 1, None]
    kept = [t for t, r in zip(texts, out) if r is None]
    assert kept == ["Hello  world", "another", "third"]
    assert run(kept, mode="exact") == [None, None, None]


@pytest.fixture(scope="module")
def planted():
    docs = paragraphs("calib")[:300]
    return docs, *plant(docs, share=0.3, rates=(0.0, 0.01, 0.02), seed=3)


def test_minhash_finds_planted_near_duplicates_in_real_text(planted):
    docs, texts, truth = planted
    out = run(texts, mode="minhash", threshold=0.7, num_perm=128, ngram=5)
    removed = [i for i, r in enumerate(out) if r is not None]
    copies = [i for i, t in enumerate(truth) if t is not None]
    assert len(copies) == 90
    hits = [i for i in removed if truth[i] is not None]
    precision, recall = len(hits) / len(removed), len(hits) / len(copies)
    assert precision == 1.0 and recall >= 0.95, (precision, recall)
    for i in hits:  # each copy is clustered with the document it was made from
        assert out[i] == truth[i][0]
    exact = run(texts, mode="exact")  # exact finds the unedited (or only re-cased) copies, no other
    same = {i for i in copies if normalize(texts[i]) == normalize(texts[truth[i][0]])}
    assert {i for i in copies if truth[i][1] == 0.0} < same < set(copies)
    assert {i for i, r in enumerate(exact) if r is not None} == same


def test_minhash_misses_heavily_edited_copies_at_a_high_threshold(planted):
    docs, texts, truth = planted
    heavy, truth2 = plant(docs, share=0.3, rates=(0.2,), seed=4)
    out = run(heavy, mode="minhash", threshold=0.9)
    copies = [i for i, t in enumerate(truth2) if t is not None]
    assert sum(out[i] is not None for i in copies) <= 0.1 * len(copies)


def test_jaccard_estimate_tracks_the_true_jaccard():
    docs = paragraphs("calib")[:40]
    d = dedup.Deduplicator(dedup.DedupConfig(num_perm=256))
    rng = random.Random(0)
    errs = []
    for doc in docs:
        other = edit(doc, 0.05, rng)
        true = jaccard(shingles(doc, 5), shingles(other, 5))
        a, b = d.signature(doc), d.signature(other)
        errs.append(abs(a.jaccard(b) - true))
    assert sum(errs) / len(errs) < 0.04


def test_edit_makes_the_stated_number_of_edits():
    rng = random.Random(0)
    text = " ".join(f"w{i}" for i in range(200))
    assert edit(text, 0.0, rng) == text
    changed = edit(text, 0.05, rng)
    assert changed != text and abs(len(changed.split()) - 200) <= 10


@pytest.mark.parametrize(
    "kw",
    [{"mode": "fuzzy"}, {"threshold": 0.0}, {"threshold": 1.5}, {"num_perm": 8}, {"ngram": 0}, {"bands": 7}],
)
def test_bad_configs_are_refused(kw):
    with pytest.raises(ConfigError):
        dedup.DedupConfig(**kw)
