import sqlite3

import pytest

from efflm.bench import db, leaderboard
from efflm.core.errors import EfflmError


def _ok(conn, label, ppl, nbytes, tok_s, extra=None):
    m = {
        "ppl": ppl,
        "eval_tokens": 4088,
        "seq_len": 512,
        "bytes": nbytes,
        "disk_bytes": nbytes,
        "bytes_per_token": nbytes,
        "tok_s": tok_s,
        "tok_s_min": tok_s,
        "tok_s_max": tok_s,
        "ttft_ms": 5.0,
        "ceiling_tok_s": 100.0,
        "bandwidth_gbs": 20.0,
        "peak_rss_mb": 500.0,
    }
    db.insert(
        conn,
        status="ok",
        model="m",
        label=label,
        recipe="- method: x\n",
        families="quantize",
        metrics=m,
        env={"commit": "abc123"},
        extra=extra,
    )


def test_failed_rows_carry_no_metrics(tmp_path):
    conn = db.connect(tmp_path / "r.sqlite")
    db.insert(conn, status="failed", model="m", label="rtn", recipe="-", error="boom", metrics={"ppl": 1.0})
    (row,) = db.rows(conn)
    assert row["status"] == "failed" and row["error"] == "boom"
    assert all(row[m] is None for m in db.METRICS)


def test_garbage_and_locked_databases_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(EfflmError, match="not a SQLite database"):
        db.connect(bad)
    good = tmp_path / "good.sqlite"
    db.connect(good)
    holder = sqlite3.connect(good, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(EfflmError, match="locked by another process"):
            db.connect(good)
    finally:
        holder.execute("ROLLBACK")
    with pytest.raises(EfflmError, match="is a directory"):
        db.connect(tmp_path)


def test_leaderboard_markdown_and_plot(tmp_path):
    conn = db.connect(tmp_path / "r.sqlite")
    _ok(conn, "dense(dtype=float32)", 40.0, 500_000_000, 12.0)
    _ok(conn, "rtn", 50.0, 150_000_000, 8.0)
    _ok(conn, "rtn(bits=3)", 120.0, 150_000_000, 9.0)
    db.insert(conn, status="failed", model="m", label="gptq", recipe="-", error="worker killed by SIGKILL")
    md, md_path, png = leaderboard.write(tmp_path / "r.sqlite", "m", tmp_path / "out")
    assert "| rtn | quantize | 50.00 | +25.0% | 150.0 | 0.300 |" in md
    assert "failed: worker killed by SIGKILL" in md
    assert md_path.read_text() == md and png.stat().st_size > 10_000
    with pytest.raises(EfflmError, match="no current results for model"):
        leaderboard.write(tmp_path / "r.sqlite", "other", tmp_path / "out")


def test_leaderboard_shows_only_current_measurement_rows_and_lists_stale(tmp_path):
    path = tmp_path / "r.sqlite"
    conn = db.connect(path)
    _ok(conn, "dense(dtype=float32)", 40.0, 500_000_000, 12.0)
    _ok(conn, "old-method", 41.0, 100_000_000, 99.0)
    conn.execute("UPDATE runs SET measurement = ? WHERE label = 'old-method'", (db.MEASUREMENT - 1,))
    md, _, _ = leaderboard.write(path, "m", tmp_path / "out")
    assert "| dense(dtype=float32) |" in md and "| old-method |" not in md
    assert "Stale: 1 older row(s) of 1 recipe(s)" in md
    assert f"measurement version {db.MEASUREMENT}" in md
    row = db.rows(db.open_readonly(path), "m")[0]
    assert row["measurement"] == db.MEASUREMENT and row["commit_id"] == "abc123"
    assert "efflm commit abc123" in md


def test_readonly_open_changes_nothing(tmp_path):
    path = tmp_path / "r.sqlite"
    sqlite3.connect(path).execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, label TEXT)")
    before = path.read_bytes()
    conn = db.open_readonly(path)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("INSERT INTO runs (label) VALUES ('x')")
    assert path.read_bytes() == before  # no schema change, no new columns
    with pytest.raises(EfflmError, match="not found"):
        db.open_readonly(tmp_path / "absent.sqlite")


def test_short_plot_labels():
    assert leaderboard.short_label("rtn(bits=4,group_size=64,symmetric=True)") == "rtn w4 g64 sym"
    assert leaderboard.short_label("dense(dtype=bfloat16)") == "dense bfloat16"


def test_pareto_front():
    pts = [(1, 10), (2, 5), (3, 6), (4, 1)]
    assert leaderboard.pareto_front(pts, higher_x_better=False) == [0, 1, 3]
    assert leaderboard.pareto_front(pts, higher_x_better=True) == [3]
    assert leaderboard.pareto_front([(1, 1), (2, 2)], higher_x_better=True) == [0, 1]


def test_task_scores_become_leaderboard_columns(tmp_path):
    conn = db.connect(tmp_path / "r.sqlite")
    task = {"efflm_nextline": {"metric": "acc_norm", "value": 0.4125, "stderr": 0.0246, "limit": None}}
    _ok(conn, "dense(dtype=float32)", 40.0, 500_000_000, 12.0, extra={"tasks": task})
    _ok(conn, "rtn", 50.0, 150_000_000, 8.0)  # benched without --tasks: a dash, not a zero
    md, _, _ = leaderboard.write(tmp_path / "r.sqlite", "m", tmp_path / "out")
    assert "| method | family | ppl | Δppl vs dense | efflm_nextline acc_norm | MB |" in md
    assert "| dense(dtype=float32) | quantize | 40.00 | +0.0% | 0.412 ± 0.025 | 500.0 |" in md
    assert "| rtn | quantize | 50.00 | +25.0% | – | 150.0 |" in md
    assert "Tasks: lm-evaluation-harness" in md and "efflm_nextline 0.25" in md


def test_a_row_measured_before_a_config_field_existed_is_superseded_by_the_same_recipe(tmp_path):
    from efflm.core import recipe as recipes

    conn = db.connect(tmp_path / "r.sqlite")
    recipe = "- method: gptq\n  bits: 3\n  group_size: 64\n"
    today = recipes.label(recipes.from_yaml(recipe))
    for label, ppl in (("gptq(bits=3,group_size=64)", 65.1), (today, 65.9)):  # an older efflm's label, then today's
        m = {"ppl": ppl, "bytes": 1e8, "tok_s": 90.0, "ceiling_tok_s": 100.0, "tok_s_min": 90.0, "tok_s_max": 90.0}
        db.insert(conn, status="ok", model="m", label=label, recipe=recipe, families="quantize", metrics=m)
    (row,) = leaderboard.latest(db.rows(conn))
    assert row["label"] == today and row["ppl"] == 65.9


def test_bench_leaves_the_callers_sigterm_handler_as_it_was(tmp_path, capsys):
    """A sweep turns SIGTERM into an interrupt only while it runs: a process that called
    ``main`` (a test worker, a notebook) keeps its own handler, and children it forks later
    (lm-eval's bootstrap pool) die on SIGTERM as usual."""
    import signal

    from efflm.cli import main

    mine = lambda signum, frame: None  # noqa: E731
    previous = signal.signal(signal.SIGTERM, mine)
    try:
        assert main(["bench", "--model", "tiny-llama", "--methods", "dense", "--seq-len", "32", "--windows", "1",
                     "--prompt-len", "4", "--new-tokens", "2", "--reps", "1",
                     "--db", str(tmp_path / "r.sqlite"), "--out-dir", str(tmp_path)]) == 0  # fmt: skip
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
