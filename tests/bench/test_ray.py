"""``efflm bench --executor ray``: a 3-row sweep through a local Ray instance gives the subprocess
executor's rows (speed aside); a task that dies inside Ray is a failed row and the sweep goes on;
a Ray address that does not answer is one line, quickly, before any work."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytestmark = pytest.mark.engines

from efflm.cli import main  # noqa: E402

SAME = ("label", "status", "ppl", "bytes", "disk_bytes", "kv_bytes", "eval_tokens")


def _args(tmp_path, name):
    return ["bench", "--model", "tiny-llama", "--methods", "dense,rtn,magnitude", "--db", str(tmp_path / name),
            "--out-dir", str(tmp_path / name.split(".")[0]), "--seq-len", "64", "--windows", "1", "--reps", "1",
            "--new-tokens", "4", "--threads", "2"]  # fmt: skip


def _rows(db):
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    return {r["label"]: dict(r) for r in conn.execute("SELECT * FROM runs")}


def _bench_workers(tag: str) -> list[tuple[int, int]]:
    """(pid, parent pid) of this test's running efflm bench worker processes: those whose
    environment carries ``tag`` (Ray's workers inherit the driver's), never another sweep's."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            cmd = (stat.parent / "cmdline").read_bytes()
            mine = f"EFFLM_TEST_SWEEP={tag}".encode() in (stat.parent / "environ").read_bytes()
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if b"efflm.bench.worker" in cmd and mine:
            out.append((int(stat.parent.name), ppid))
    return out


def test_ray_sweep_gives_the_subprocess_rows_and_a_task_dying_in_ray_is_a_failed_row(tmp_path):
    assert main(_args(tmp_path, "sub.sqlite")) == 0
    tag = uuid.uuid4().hex
    env = {**os.environ, "EFFLM_PROGRESS": "0", "EFFLM_TEST_SWEEP": tag}
    cmd = [sys.executable, "-m", "efflm.cli", *_args(tmp_path, "ray.sqlite"), "--executor", "ray"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not _bench_workers(tag) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    (worker, ray_worker), *_ = _bench_workers(tag)
    os.kill(ray_worker, signal.SIGKILL)  # the Ray worker process running the task dies
    os.kill(worker, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    sub, ray_rows = _rows(tmp_path / "sub.sqlite"), _rows(tmp_path / "ray.sqlite")
    assert set(ray_rows) == set(sub)
    failed = [r for r in ray_rows.values() if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["error"].startswith("ray task failed") and failed[0]["ppl"] is None
    for label, r in ray_rows.items():
        if r["status"] == "ok":
            assert {k: r[k] for k in SAME} == {k: sub[label][k] for k in SAME}
    assert "ray task failed" in err


@pytest.mark.parametrize(
    "extra,pattern",
    [
        (["--executor", "ray", "--address", "127.0.0.1:9"], "Ray address 127.0.0.1:9 does not answer"),
        (["--executor", "ray", "--address", "nohost"], "--address must be HOST:PORT"),
        (["--address", "127.0.0.1:6379"], "--address and --gpus-per-row go with --executor ray"),
        (["--executor", "ray", "--gpus-per-row", "-1"], "--gpus-per-row must be ≥ 0"),
    ],
)
def test_ray_bad_input_is_one_line_within_the_timeout(tmp_path, capsys, extra, pattern):
    t0 = time.time()
    assert main([*_args(tmp_path, "db.sqlite"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("efflm: error: ") and pattern in err and err.count("\n") == 1
    assert time.time() - t0 < 30 and not (tmp_path / "db.sqlite").exists()
