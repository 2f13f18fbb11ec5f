"""The contracts every command keeps: one-line errors before any work, atomic outputs that
never clobber or leave temporaries, read-only reads, trusted kernels, safe torch.load."""

import ast
import os
from pathlib import Path

import pytest

from efflm.cli import main
from efflm.core.atomic import atomic_dir, atomic_write_text
from efflm.core.errors import EfflmError

ROOT = Path(__file__).resolve().parents[1]


def one_line(capsys, *argv) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("efflm: error: "), err
    return lines[0]


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if any model weights are loaded or any recipe step is applied."""
    import efflm.io.load
    import efflm.pipeline

    def boom(*a, **k):
        raise AssertionError("work started before the input was refused")

    monkeypatch.setattr(efflm.pipeline, "load_and_apply", boom)
    monkeypatch.setattr(efflm.io.load, "load", boom)


@pytest.mark.parametrize(
    "argv,pattern",
    [
        (["compress", "--model", "tiny-llama", "--out", "OUT"], "required: --recipe"),
        (["bench", "--windows", "0", "--db", "OUT"], "argument --windows: expected a positive integer, got 0"),
        (["generate", "--max-len", "0", "hi"], "argument --max-len: expected a positive integer, got 0"),
        (["generate", "--k", "0", "hi"], "argument --k: expected a positive integer, got 0"),
        (["compress", "--recipe", "r.yaml", "--out", "OUT", "--format", "zip"], "argument --format: invalid choice"),
        (["eval", "--seq-len", "x"], "argument --seq-len: expected a positive integer, got 'x'"),
        (["papers", "suggest-eval", "--k", "0"], "argument --k: expected a positive integer, got '0'"),
        (["nosuch"], "invalid choice: 'nosuch'"),
        ([], "required: COMMAND"),
    ],
)
def test_argparse_errors_are_one_line_and_write_nothing(capsys, tmp_path, argv, pattern):
    out = tmp_path / "out"
    assert pattern in one_line(capsys, *[str(out) if a == "OUT" else a for a in argv])
    assert not out.exists()


def test_help_describes_every_option_with_its_default(capsys):
    for cmd in ("bench", "eval", "compress", "generate", "leaderboard"):
        assert main([cmd, "--help"]) == 0
        text = capsys.readouterr().out
        for option in ("--model", "--db", "--windows", "--seq-len", "--recipe", "--out"):
            if f"{option} " in text.split("options:")[0]:  # the command has this option
                block = text.split(f"  {option} ", 1)[1].split("\n  -", 1)[0]
                assert len(block.split()) > 2, f"{cmd} {option} has no help line"
        assert "(default:" in text


def test_eval_refuses_a_short_text_before_running_the_recipe(capsys, tmp_path, gptq, no_work):
    short = tmp_path / "short.txt"
    short.write_text("To be or not to be.")
    msg = one_line(capsys, "eval", "--model", "tiny-llama", "--recipe", gptq, "--text-file", str(short))
    assert "text too short" in msg


def test_too_few_calibration_tokens_is_found_before_the_weights_load(capsys, tmp_path, gptq, no_work):
    out = tmp_path / "m"
    msg = one_line(
        capsys, "compress", "--model", "tiny-llama", "--recipe", gptq, "--out", str(out),
        "--calib-samples", "100000", "--calib-len", "1024",
    )  # fmt: skip
    assert "too few calibration tokens" in msg and not out.exists()


@pytest.mark.parametrize(
    "extra,pattern",
    [
        (["--calib-samples", "100000", "--calib-len", "1024"], "too few calibration tokens"),
        (["--calib-len", "5000"], "calibration length 5000 exceeds the model's 1024 positions"),
        (["--seq-len", "4096"], "--seq-len 4096 exceeds the model's 1024 positions"),
        (["--prompt-len", "1000", "--new-tokens", "100"], "exceeds the model's 1024 positions"),
    ],
)
def test_bench_refuses_oversized_settings_before_the_database_exists(capsys, tmp_path, gptq, extra, pattern):
    db = tmp_path / "db.sqlite"
    msg = one_line(capsys, "bench", "--model", "tiny-llama", "--recipe", gptq, "--db", str(db), *extra)
    assert pattern in msg
    assert not db.exists() and not (tmp_path / "leaderboard.md").exists()


def test_compress_never_deletes_a_directory_that_appeared_at_out(capsys, tmp_path, monkeypatch):
    import efflm.pipeline

    out = tmp_path / "m"
    real = efflm.pipeline.load_and_apply

    def slow_run(*a, **k):  # meanwhile, someone else creates --out
        out.mkdir()
        (out / "theirs.txt").write_text("keep me")
        return real(*a, **k)

    monkeypatch.setattr(efflm.pipeline, "load_and_apply", slow_run)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("- method: rtn\n  bits: 4\n  group_size: 32\n")
    msg = one_line(capsys, "compress", "--model", "tiny-llama", "--recipe", str(recipe), "--out", str(out))
    assert f"output exists: {out}" in msg
    assert (out / "theirs.txt").read_text() == "keep me" and sorted(p.name for p in out.iterdir()) == ["theirs.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_atomic_write_uses_unique_temporaries_and_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "one")
    (tmp_path / ".a.txt.tmp").write_text("someone else's file with the old fixed name")
    atomic_write_text(target, "two")
    assert target.read_text() == "two" and (tmp_path / ".a.txt.tmp").exists()

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "three")
    assert target.read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.txt.tmp", "a.txt"]


def test_atomic_write_refuses_non_regular_targets(tmp_path):
    with pytest.raises(EfflmError, match="not a regular file"):
        atomic_write_text(Path("/dev/null"), "x")
    (tmp_path / "d").mkdir()
    with pytest.raises(EfflmError, match="not a regular file"):
        atomic_write_text(tmp_path / "d", "x")


def test_atomic_dir_removes_its_temporary_on_failure(tmp_path):
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "out") as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("crash halfway")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_leaves_a_directory_that_appeared_meanwhile(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(EfflmError, match="appeared while efflm was writing it"):
        with atomic_dir(out, replace=True) as tmp:
            (tmp / "ours.bin").write_bytes(b"x")
            out.mkdir()  # an empty directory: rename(2) would silently replace it
    assert list(out.iterdir()) == [] and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_leaderboard_plot_leaves_no_temporary_on_failure(tmp_path, monkeypatch):
    import matplotlib.figure

    from efflm.bench import db, leaderboard

    conn = db.connect(tmp_path / "r.sqlite")
    m = {"ppl": 40.0, "eval_tokens": 100, "seq_len": 64, "bytes": 1e6, "tok_s": 5.0, "tok_s_min": 5.0,
         "tok_s_max": 5.0, "ceiling_tok_s": 9.0, "bandwidth_gbs": 9.0}  # fmt: skip
    db.insert(conn, status="ok", model="m", label="dense(dtype=float32)", recipe="-", metrics=m)

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", fail)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        leaderboard.write(tmp_path / "r.sqlite", "m", out)
    assert sorted(p.name for p in out.iterdir()) == ["leaderboard.md"]


def test_papers_render_opens_the_database_read_only(capsys, tmp_path):
    import sqlite3

    db = tmp_path / "old.sqlite"  # an older efflm's database: a runs table without the newer columns
    sqlite3.connect(db).execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, status TEXT, model TEXT, label TEXT)")
    before = db.read_bytes()
    out = tmp_path / "papers.md"
    assert main(["papers", "render", "--db", str(db), "--out", str(out)]) == 0
    assert out.is_file() and db.read_bytes() == before


def test_kernel_library_is_rebuilt_when_its_hash_does_not_match(tmp_path, monkeypatch):
    from efflm.nn import c_kernels

    monkeypatch.setenv("EFFLM_CACHE", str(tmp_path))
    c_kernels.library.cache_clear()
    try:
        if c_kernels.library() is None:
            pytest.skip("no C compiler or AVX2 here: the kernel is not used")
        (so,) = (tmp_path / "kernels").glob("*.so")
        good = so.read_bytes()
        bad = tmp_path / "bad.so"  # replaced, not written in place: the loaded copy stays mapped
        bad.write_bytes(good + b"tampered")
        os.replace(bad, so)
        c_kernels.library.cache_clear()
        assert c_kernels.library() is not None
        assert so.read_bytes() == good  # rebuilt, not trusted by its name
    finally:
        c_kernels.library.cache_clear()
        c_kernels.library()


def test_every_torch_load_passes_weights_only_true():
    calls = []
    for path in [*ROOT.joinpath("efflm").rglob("*.py"), *ROOT.joinpath("benchmarks").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "load":
                if getattr(node.func.value, "id", "") == "torch":
                    kw = {k.arg: k.value for k in node.keywords}
                    ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                    calls.append((path.name, node.lineno, ok))
    assert calls and all(ok for *_, ok in calls), calls


def test_cli_suite_choices_are_the_bench_suites():
    from efflm.bench.suites import SUITES
    from efflm.cli import SUITE_NAMES

    assert tuple(SUITES) == SUITE_NAMES
