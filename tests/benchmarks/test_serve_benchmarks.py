"""The serving benchmarks under benchmarks/ run end to end on tiny-llama (numbers not checked)."""

import pytest

from tests.benchmarks.test_smoke import run


def test_serve_load(tmp_path):
    md = run(
        "serve_load",
        ["--concurrency", "1,2", "--prompt-len", "8", "--max-tokens", "4"],
        tmp_path,
    )
    assert "| efflm serve (W4 g32, max batch 8) | 2 | 4 | 0 |" in md
    assert "answered 429" in md  # the burst beyond max batch + queue was refused


def test_serve_prefix(tmp_path):
    md = run("serve_prefix", ["--system-tokens", "80", "--streams", "2", "--new", "2", "--rounds", "1"], tmp_path)
    assert "| prefix cache off |" in md and "| prefix cache on |" in md
    assert "Outputs with the cache on equal those with it off: yes." in md


def test_serve_structured(tmp_path):
    pytest.importorskip("llguidance")
    md = run("serve_structured", ["--rounds", "1", "--new", "6", "--streams", "2"], tmp_path)
    assert "| llguidance |" in md and "| free |" in md and "| json schema |" in md


def test_serve_spec(tmp_path):
    md = run("serve_spec", ["--streams", "1,2", "--new", "6", "--rounds", "1"], tmp_path)
    for workload in ("rewrite", "open"):
        assert f"| {workload} | 2 |" in md
    assert "| NO |" not in md  # speculation inside the batch keeps plain decoding's outputs
