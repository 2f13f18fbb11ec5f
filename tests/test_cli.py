"""Every bad input: one line naming the problem, exit code 2, nothing written."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from efflm.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, pattern):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("efflm: error:"), err
    assert pattern in lines[0], lines[0]


@pytest.fixture
def recipe(tmp_path):
    def make(text):
        p = tmp_path / f"r{abs(hash(text))}.yaml"
        p.write_text(text)
        return str(p)

    return make


def test_methods_lists_registry(capsys):
    code, out, _ = run(capsys, "methods")
    assert code == 0 and "rtn" in out and "quantize" in out and "dense" in out


@pytest.mark.parametrize(
    "model,pattern",
    [
        ("/no/such/model", "model not found"),
        ("README.md", "not a model"),
    ],
)
def test_bad_model_spec(capsys, tmp_path, recipe, model, pattern):
    out = tmp_path / "out"
    code, _, err = run(capsys, "compress", "--model", model, "--recipe", recipe("- method: rtn\n"), "--out", str(out))
    assert_one_line_error(code, err, pattern)
    assert not out.exists()


def test_unsupported_architecture(capsys, tmp_path, recipe):
    (tmp_path / "bloom").mkdir()
    (tmp_path / "bloom" / "config.json").write_text(json.dumps({"model_type": "bloom"}))
    code, _, err = run(capsys, "eval", "--model", str(tmp_path / "bloom"))
    assert_one_line_error(
        code,
        err,
        "supported: gemma2, gemma3_text, gpt2, llama, mistral, mixtral, opt, phi3, qwen2, qwen2_moe, qwen3, qwen3_moe",
    )


def test_truncated_gguf(capsys, tmp_path):
    from efflm.models.sources import smollm2_gguf

    cut = tmp_path / "cut.gguf"
    cut.write_bytes(smollm2_gguf().read_bytes()[:1_000_000])
    code, _, err = run(capsys, "eval", "--model", str(cut))
    assert_one_line_error(code, err, "truncated or damaged")


@pytest.mark.parametrize(
    "text,pattern",
    [
        ("- method: rnt\n", "did you mean 'rtn'"),
        ("- method: rtn\n  bits: 9\n", "bits must be in 2..8"),
        ("- method: rtn\n  group_size: 48\n", "does not divide the input dimension"),
        ("- method: rtn\n  group_size: -3\n", "group_size must be positive"),
        ("- method: [rtn\n", "not valid YAML"),
        ("- method: wanda\n  sparsity: 1.0\n", "sparsity must be in [0, 1)"),
        ("- method: sparsegpt\n  pattern: '4:2'\n", "need 0 < N < M"),
        ("- method: magnitude\n  pattern: '6:7'\n  sparsity: 0.14285714285714285\n", "M=7 does not divide"),
        ("- method: svd\n  rank: 100\n", "exceeds min(in, out)"),
        ("- method: llm_pruner\n  head_ratio: 0.9\n", "would remove all 4 heads"),
        ("- method: llm_pruner\n  head_ratio: 0.25\n", "breaks GQA grouping"),
        ("- method: zeroquant_fp\n  weight_format: e3m2\n", "weight_format must be one of"),
        ("- method: zeroquant_fp\n  act_format: int8\n", "act_format must be e4m3, e5m2 or none"),
        ("- method: squeezellm\n  outliers: 1.0\n", "outliers must be in [0, 1)"),
        ("- method: squeezellm\n  bits: 9\n", "bits must be in 2..8"),
        ("- method: spqr\n  group_size: 48\n", "block_size 128 must be a multiple of group_size 48"),
        ("- method: spqr\n  group_size: 128\n", "group_size 128 (and 8) must divide"),
        ("- method: spqr\n  stat_bits: 1\n", "bits and stat_bits must be in 2..8"),
        ("- method: quip\n  bits: 1\n", "bits must be in 2..8"),
        ("- method: llm_int8\n  threshold: 0\n", "threshold must be positive"),
        ("- method: zeroquant\n  act_bits: 1\n", "act_bits must be 0 or in 2..8"),
        (
            "- method: llm_pruner\n  ratio: 0.25\n  multiple_of: 8\n- method: rtn\n  group_size: 64\n",
            "does not divide the input dimension 96",
        ),
    ],
)
def test_invalid_recipes_rejected_before_work(capsys, tmp_path, recipe, text, pattern):
    out = tmp_path / "out"
    code, _, err = run(capsys, "compress", "--model", "tiny-llama", "--recipe", recipe(text), "--out", str(out))
    assert_one_line_error(code, err, pattern)
    assert not out.exists()
    db = tmp_path / "db.sqlite"
    code, _, err = run(
        capsys, "bench", "--model", "tiny-llama", "--recipe", recipe(text), "--db", str(db), "--out-dir", str(tmp_path)
    )
    assert_one_line_error(code, err, pattern)
    assert not db.exists()


def test_unknown_method_in_bench_suggests(capsys, tmp_path):
    code, _, err = run(
        capsys, "bench", "--model", "tiny-llama", "--methods", "rnt", "--db", str(tmp_path / "d"), "--out-dir",
        str(tmp_path),
    )  # fmt: skip
    assert_one_line_error(code, err, "did you mean 'rtn'")
    assert list(tmp_path.iterdir()) == []  # no database, no leaderboard


def test_empty_and_short_text(capsys, tmp_path):
    empty, short = tmp_path / "empty.txt", tmp_path / "short.txt"
    empty.write_text("")
    short.write_text("To be or not to be.")
    code, _, err = run(capsys, "eval", "--model", "tiny-llama", "--text-file", str(empty))
    assert_one_line_error(code, err, "empty")
    code, _, err = run(capsys, "eval", "--model", "tiny-llama", "--text-file", str(short))
    assert_one_line_error(code, err, "text too short")


def test_eval_on_user_text(capsys, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    code, out, _ = run(
        capsys, "eval", "--model", "tiny-llama", "--text-file", str(f), "--seq-len", "128", "--windows", "2"
    )
    assert code == 0 and "over 254 tokens (2 windows of 128)" in out


@pytest.mark.parametrize("kind", ["garbage", "locked", "directory"])
def test_unusable_results_database(capsys, tmp_path, kind):
    path = tmp_path / "db.sqlite"
    holder = None
    if kind == "garbage":
        path.write_bytes(b"\x00garbage" * 300)
    elif kind == "directory":
        path.mkdir()
    else:
        sqlite3.connect(path).execute("CREATE TABLE t (x)")
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
    try:
        code, _, err = run(
            capsys,
            "bench",
            "--model",
            "tiny-llama",
            "--methods",
            "dense",
            "--db",
            str(path),
            "--out-dir",
            str(tmp_path / "o"),
        )
    finally:
        if holder:
            holder.execute("ROLLBACK")
    assert_one_line_error(code, err, "results database")
    assert not (tmp_path / "o").exists()


def test_compress_writes_a_loadable_directory(capsys, tmp_path, recipe):
    out = tmp_path / "q4"
    w4 = recipe("- method: rtn\n  group_size: 32\n")
    code, _, _ = run(capsys, "compress", "--model", "tiny-llama", "--recipe", w4, "--out", str(out))
    assert code == 0 and (out / "efflm.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    code, out_text, _ = run(capsys, "eval", "--model", str(out), "--seq-len", "64", "--windows", "1")
    assert code == 0 and "ppl" in out_text
    code, _, err = run(
        capsys, "compress", "--model", "tiny-llama", "--recipe", recipe("- method: rtn\n"), "--out", str(out)
    )
    assert_one_line_error(code, err, "output exists")


@pytest.mark.parametrize(
    "args,text,pattern",
    [
        (["--calib-samples", "100000"], "- method: gptq\n  group_size: 32\n", "too few calibration tokens"),
        (["--format", "gguf", "--model", "tiny-opt"], "- method: rtn\n  group_size: 32\n", "does not write"),
        (["--format", "gguf", "--model", "tiny-mistral"], "- method: rtn\n  group_size: 32\n", "no sliding window"),
        (["--format", "gguf"], "- method: rtn\n  bits: 3\n  group_size: 32\n", "no llama.cpp block type"),
        (["--format", "compressed-tensors"], "- method: rtn\n  symmetric: false\n  group_size: 32\n", "int_zero_point"),
    ],
)
def test_compress_bad_calibration_and_export_requests(capsys, tmp_path, recipe, args, text, pattern):
    out = tmp_path / ("x.gguf" if "gguf" in args else "x")
    code, _, err = run(capsys, "compress", "--model", "tiny-llama", "--recipe", recipe(text), "--out", str(out), *args)
    assert_one_line_error(code, err, pattern)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in tmp_path.glob("r*.yaml"))


@pytest.mark.engines
def test_compress_to_compressed_tensors(capsys, tmp_path, recipe):
    pytest.importorskip("compressed_tensors")
    out = tmp_path / "ct"
    w4 = recipe("- method: rtn\n  group_size: 32\n")
    code, text, err = run(
        capsys, "compress", "--model", "tiny-llama", "--recipe", w4, "--out", str(out), "--format", "compressed-tensors"
    )
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    assert config["quantization_config"]["format"] == "pack-quantized"


def _children(pid: int) -> list[int]:
    """The bench's worker subprocesses (not the short-lived `git` it runs to stamp rows)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"efflm.bench.worker" in cmdline:
            kids.append(int(stat.parent.name))
    return kids


def _bench_cmd(tmp_path, *extra):
    return [
        sys.executable,
        "-m",
        "efflm.cli",
        "bench",
        "--model",
        "tiny-llama",
        "--db",
        str(tmp_path / "db.sqlite"),
        "--out-dir",
        str(tmp_path),
        "--seq-len",
        "64",
        "--windows",
        "1",
        "--reps",
        "1",
        "--new-tokens",
        "4",
        *extra,
    ]


def _start_bench(tmp_path, methods: str) -> tuple[subprocess.Popen, int]:
    """Start `efflm bench` and wait until its first worker subprocess exists."""
    env = {**os.environ, "EFFLM_PROGRESS": "0"}
    proc = subprocess.Popen(
        _bench_cmd(tmp_path, "--methods", methods), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 180
    while not _children(proc.pid) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    kids = _children(proc.pid)
    assert len(kids) == 1, (
        f"no worker started (bench exited {proc.poll()}): {proc.stderr.read() if proc.poll() is not None else ''}"
    )
    (worker,) = kids
    return proc, worker


def test_killed_worker_leaves_a_failed_row_and_no_partial_metrics(tmp_path):
    proc, worker = _start_bench(tmp_path, "rtn,dense")
    os.kill(worker, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    rows = (
        sqlite3.connect(tmp_path / "db.sqlite").execute("SELECT label, status, error, ppl, bytes FROM runs").fetchall()
    )
    assert rows[0] == (
        "rtn(bits=4,group_size=64,symmetric=True)",
        "failed",
        "worker killed by SIGKILL (out of memory?)",
        None,
        None,
    )
    assert rows[1][:2] == ("dense(dtype=float32)", "ok") and rows[1][3] > 0
    assert "failed: worker killed by SIGKILL" in out


def test_interrupted_bench_marks_the_running_row_failed(tmp_path):
    proc, _ = _start_bench(tmp_path, "rtn")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err
    rows = sqlite3.connect(tmp_path / "db.sqlite").execute("SELECT status, error, ppl FROM runs").fetchall()
    assert rows == [("failed", "interrupted", None)]


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["--top-p", "0"], "top-p must be in (0, 1]"),
        (["--top-p", "1.5"], "top-p must be in (0, 1]"),
        (["--max-new-tokens", "0"], "argument --max-new-tokens: expected a positive integer, got 0"),
        (["--max-new-tokens", "-2"], "argument --max-new-tokens: expected a positive integer, got -2"),
        (["--max-len", "4"], "longer than the KV cache"),
    ],
)
def test_generate_bad_input(capsys, args, pattern):
    code, _, err = run(capsys, "generate", "--model", "tiny-llama", *args, "a prompt of some length")
    assert_one_line_error(code, err, pattern)


def test_generate_bad_kv_budget_and_draft(capsys, tmp_path, recipe):
    code, _, err = run(
        capsys,
        "generate",
        "--model",
        "tiny-llama",
        "--recipe",
        recipe("- method: streaming_llm\n  budget: 4\n  sinks: 4\n"),
        "hi",
    )
    assert_one_line_error(code, err, "smaller than sinks + 1")
    from transformers import LlamaForCausalLM

    from efflm.io.save import save
    from efflm.models.tiny import tiny_config, tiny_tokenizer

    save(LlamaForCausalLM(tiny_config(vocab_size=300)), tiny_tokenizer(), tmp_path / "other", "")
    capsys.readouterr()
    code, _, err = run(capsys, "generate", "--model", "tiny-llama", "--draft-model", str(tmp_path / "other"), "hi")
    assert_one_line_error(code, err, "vocabulary")


def test_generate_streams_text_and_reports_speed(capsys):
    code, out, err = run(
        capsys, "generate", "--model", "tiny-llama", "--max-new-tokens", "8", "--prompt-lookup", "abcabc"
    )
    assert code == 0 and "tok/s" in err and "bandwidth ceiling" in err and "accepted" in err
    code, out, err = run(capsys, "generate", "--model", "tiny-llama", "--max-new-tokens", "5", "--chat", "a", "bb")
    assert code == 0 and out.startswith("[0] ") and "\n[1] " in out
