"""Results database (SQLite). One row per benchmarked recipe, written in one transaction.

A row is either ``ok`` with every metric, or ``failed`` with its error and no metrics. Every
row records the commit it was measured at and the ``MEASUREMENT`` version of the harness:
when the way a metric is measured changes, the version goes up, and the leaderboard shows
only rows of the current version (older rows stay in the database, listed as stale).
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from efflm.core.defaults import REFERENCE_DB, RUNS_DB
from efflm.core.errors import EfflmError

DEFAULT_DB = Path(RUNS_DB)


def read_default() -> Path:
    """The database ``efflm leaderboard`` and ``efflm report`` show without ``--db``: the user's
    runs, or, before any run, the committed reference results of a checkout."""
    runs, reference = Path(RUNS_DB), Path(REFERENCE_DB)
    return runs if runs.exists() or not reference.exists() else reference


# 1: speed timed on transformers' generate (before the decode path); 2: speed on efflm's decode
# path, speculative rows clocked like plain rows, SmoothQuant's alpha chosen on a development split.
MEASUREMENT = 2
METRICS = (
    "ppl",
    "eval_tokens",
    "seq_len",
    "bytes",
    "disk_bytes",
    "bytes_per_token",
    "tok_s",
    "tok_s_min",
    "tok_s_max",
    "ttft_ms",
    "ttft_ms_min",
    "ttft_ms_max",
    "ceiling_tok_s",
    "bandwidth_gbs",
    "peak_rss_mb",
    "wall_s",
    "sparse_bytes",
    "hf_tok_s",
    "kv_bytes",
)
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    error TEXT,
    model TEXT NOT NULL,
    model_hash TEXT,
    label TEXT NOT NULL,
    commit_id TEXT,
    measurement INTEGER,
    recipe TEXT NOT NULL,
    families TEXT,
    {", ".join(f"{m} REAL" for m in METRICS)},
    env TEXT,
    extra TEXT
)"""


def connect(path: str | Path = DEFAULT_DB, create: bool = True) -> sqlite3.Connection:
    """Open (and create) the database, proving it is readable and not locked before any work."""
    path = Path(path)
    if path.is_dir():
        raise EfflmError(f"results database {path} is a directory")
    if not path.exists() and not create:
        raise EfflmError(f"results database not found: {path} (run `efflm bench` first)")
    if path.exists() and not path.is_file():
        raise EfflmError(f"results database {path} is not a regular file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=2.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("BEGIN IMMEDIATE")  # fails now, not after an hour of work, if locked
        conn.execute(SCHEMA)
        have = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
        for col, kind in [*((m, "REAL") for m in METRICS), ("commit_id", "TEXT"), ("measurement", "INTEGER")]:
            if col not in have:  # a database from an older efflm gains the newer columns
                conn.execute(f"ALTER TABLE runs ADD COLUMN {col} {kind}")
        conn.execute("COMMIT")
    except sqlite3.OperationalError as e:
        msg = "locked by another process" if "locked" in str(e) else f"unusable ({e})"
        raise EfflmError(f"results database {path} is {msg}") from None
    except sqlite3.DatabaseError:
        raise EfflmError(f"results database {path} is not a SQLite database") from None
    except OSError as e:
        raise EfflmError(f"results database {path} cannot be opened: {e.strerror}") from None
    return conn


def open_readonly(path: str | Path = DEFAULT_DB) -> sqlite3.Connection:
    """Open an existing database for reading only: no schema change, no write lock."""
    path = Path(path)
    if not path.is_file():
        raise EfflmError(f"results database not found: {path} (run `efflm bench` first)")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=2.0)
        conn.row_factory = sqlite3.Row
        have = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
    except sqlite3.DatabaseError:
        raise EfflmError(f"results database {path} is not a readable efflm database") from None
    if not have:
        raise EfflmError(f"results database {path} has no runs table (run `efflm bench` first)")
    return conn


def insert(
    conn: sqlite3.Connection,
    *,
    status: str,
    model: str,
    label: str,
    recipe: str,
    families: str = "",
    model_hash: str | None = None,
    error: str | None = None,
    metrics: dict[str, Any] | None = None,
    env: dict | None = None,
    extra: dict | None = None,
) -> int:
    """Write one row in a single transaction. Failed rows carry no metrics."""
    metrics = {} if status == "failed" else (metrics or {})
    row = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "status": status,
        "error": error,
        "model": model,
        "model_hash": model_hash,
        "label": label,
        "commit_id": (env or {}).get("commit"),
        "measurement": MEASUREMENT,
        "recipe": recipe,
        "families": families,
        **{m: metrics.get(m) for m in METRICS},
        "env": json.dumps(env or {}),
        "extra": json.dumps(extra or {}),
    }
    cols = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    try:
        with conn:
            cur = conn.execute(f"INSERT INTO runs ({cols}) VALUES ({marks})", tuple(row.values()))
    except sqlite3.OperationalError as e:
        raise EfflmError(f"could not write the result row: {e}") from None
    return int(cur.lastrowid)


def rows(conn: sqlite3.Connection, model: str | None = None) -> list[dict]:
    q = "SELECT * FROM runs" + (" WHERE model = ?" if model else "") + " ORDER BY id"
    out = [dict(r) for r in conn.execute(q, (model,) if model else ()).fetchall()]
    for r in out:  # rows of a database older than these columns
        r.setdefault("commit_id", None)
        r.setdefault("measurement", None)
    return out


def current(rows_: list[dict]) -> tuple[list[dict], list[dict]]:
    """(rows of the current measurement version, stale rows of older versions)."""
    cur = [r for r in rows_ if r.get("measurement") == MEASUREMENT]
    return cur, [r for r in rows_ if r.get("measurement") != MEASUREMENT]
