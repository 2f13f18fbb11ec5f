import shutil

import pytest

from efflm.catalog import store
from efflm.cli import main


@pytest.fixture
def catalog(tmp_path):
    path = tmp_path / "papers.yaml"
    shutil.copy(store.DEFAULT_PATH, path)
    return path


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, pattern):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and pattern in lines[0], err


def test_lint_ok_and_one_line_per_problem(capsys, catalog):
    code, out, _ = run(capsys, "papers", "--file", str(catalog), "lint")
    assert code == 0 and "ok (" in out
    text = catalog.read_text()
    catalog.write_text(text.replace("- model-compression/model-pruning", "- model-compression/pruuning", 2))
    code, out, _ = run(capsys, "papers", "--file", str(catalog), "lint")
    assert code == 1 and out.count("unknown category 'model-compression/pruuning'") == len(out.splitlines()) == 2


def test_malformed_file_is_one_line_error(capsys, catalog):
    catalog.write_text("taxonomy: [\n")
    code, _, err = run(capsys, "papers", "--file", str(catalog), "search", "x")
    one_line_error(code, err, "malformed YAML")
    catalog.write_text("taxonomy: []\nentries:\n- id: x\n")
    code, _, err = run(capsys, "papers", "--file", str(catalog), "render", "--out", "/dev/null")
    one_line_error(code, err, "malformed catalog")


def test_add_appends_a_validated_entry_with_suggested_category(capsys, catalog):
    code, out, _ = run(
        capsys,
        "papers",
        "--file",
        str(catalog),
        "add",
        "--title",
        "QuIP#: Even Better LLM Quantization with Hadamard Incoherence and Lattice Codebooks",
        "--url",
        "https://arxiv.org/abs/2402.04396",
        "--year",
        "2024",
        "--venue",
        "ICML",
        "--backend",
        "tfidf",
    )
    assert code == 0 and "added quip-2 in model-compression/model-quantization" in out  # "quip" is QuIP (2023)
    entry = store.load(catalog).by_id()["quip-2"]
    assert entry["arxiv"] == "2402.04396" and entry["source"] == "added"
    code, _, _ = run(capsys, "papers", "--file", str(catalog), "lint")
    assert code == 0


@pytest.mark.parametrize(
    "args,pattern",
    [
        (
            ["--title", "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot"],
            "duplicates existing entry 'sparsegpt'",
        ),
        (
            ["--title", "Something new", "--url", "https://arxiv.org/abs/2301.00774"],
            "duplicates existing entry 'sparsegpt'",
        ),
        (["--title", "Something new", "--category", "nope"], "unknown category 'nope'"),
        (["--title", "Something new", "--url", "ftp//x"], "not an http(s) URL"),
        (["--title", "Something new", "--venue", "NeurlPS"], "unknown venue"),
    ],
)
def test_bad_add_leaves_the_file_untouched(capsys, catalog, args, pattern):
    before = catalog.read_bytes()
    code, _, err = run(capsys, "papers", "--file", str(catalog), "add", "--backend", "tfidf", *args)
    one_line_error(code, err, pattern)
    assert catalog.read_bytes() == before


def test_add_refuses_a_catalog_with_a_duplicate_id(capsys, catalog):
    text = catalog.read_text().replace("- id: gptq\n", "- id: sparsegpt\n")
    catalog.write_text(text)
    code, _, err = run(capsys, "papers", "--file", str(catalog), "add", "--title", "New", "--backend", "tfidf")
    one_line_error(code, err, "sparsegpt: duplicate id")
    assert catalog.read_text() == text


def test_search_and_render_commands(capsys, catalog, tmp_path):
    code, out, _ = run(capsys, "papers", "--file", str(catalog), "search", "--implemented")
    from efflm.methods import methods

    implemented = {m.paper for m in methods()}
    assert code == 0 and all(m.name in out for m in methods())
    assert f"{len(implemented)} matching entries" in out
    code, _, err = run(capsys, "papers", "--file", str(catalog), "search", "--category", "nope")
    one_line_error(code, err, "unknown category")
    out_md = tmp_path / "papers.md"
    code, _, _ = run(
        capsys, "papers", "--file", str(catalog), "render", "--out", str(out_md), "--db", str(tmp_path / "none.sqlite")
    )
    assert code == 0 and out_md.read_text().startswith("# Efficient-LLM papers")
