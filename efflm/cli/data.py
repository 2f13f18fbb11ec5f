"""``efflm data ...``: data-centric methods on JSONL files (JSONL in, JSONL out, atomic; a report
printed and saved as JSON beside the output)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from efflm.core.atomic import atomic_write_text
from efflm.core.errors import EfflmError
from efflm.core.progress import progress
from efflm.data import jsonl


def _fraction(v: str) -> float:
    try:
        x = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {v!r}") from None
    if not 0 < x <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {v}")
    return x


def _int_at_least(lo: int):
    def parse(v: str) -> int:
        try:
            x = int(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {v!r}") from None
        if x < lo:
            raise argparse.ArgumentTypeError(f"must be ≥ {lo}, got {v}")
        return x

    return parse


def report_path(a) -> Path:
    return Path(a.report) if a.report else Path(a.out).with_name(Path(a.out).name + ".report.json")


def _prepare(a) -> tuple[int, Path, Path]:
    """Every check before any work: the input parses (first bad line named), outputs are writable."""
    out = jsonl.check_output(a.out, [a.input])
    rep = jsonl.check_output(report_path(a), [a.input, a.out])
    if rep == out:
        raise EfflmError("--report must differ from --out")
    return jsonl.check_input(a.input, a.field), out, rep


def _finish(rep: Path, report: dict, lines: list[str]) -> int:
    atomic_write_text(rep, json.dumps(report, indent=2) + "\n")
    print("\n".join(lines + [f"report: {rep}"]))
    return 0


def cmd_dedup(a) -> int:
    from efflm.datasel.dedup import DedupConfig, Deduplicator

    cfg = DedupConfig(
        mode=a.method, threshold=a.threshold, num_perm=a.num_perm, ngram=a.ngram, seed=a.seed, bands=a.bands
    )
    n, out, rep = _prepare(a)
    d = Deduplicator(cfg)
    clusters: dict[int, list[int]] = {}
    t0 = time.perf_counter()

    def kept_rows():
        for i, (row, text) in enumerate(progress(jsonl.iter_rows(a.input, a.field), "dedup", total=n)):
            rep_index = d.add(text)
            if rep_index is None:
                yield row
            else:
                clusters.setdefault(rep_index, []).append(i)

    kept = jsonl.write_rows(out, kept_rows())
    seconds = time.perf_counter() - t0
    report = {
        "command": "dedup",
        "config": cfg.to_dict(),
        "input": str(a.input),
        "output": str(out),
        "rows_in": n,
        "rows_out": kept,
        "removed": n - kept,
        "clusters": [{"kept": k, "removed": v} for k, v in sorted(clusters.items())],
        "seconds": round(seconds, 3),
        "rows_per_s": round(n / seconds, 1) if seconds > 0 else None,
    }
    lines = [
        f"{cfg.label()}: {n} rows in, {kept} kept, {n - kept} removed in {len(clusters)} clusters "
        f"({report['rows_per_s']} rows/s)",
        f"wrote {out}",
    ]
    return _finish(rep, report, lines)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="JSONL file: one JSON object per line")
    p.add_argument("--out", required=True, help="JSONL file written (atomically)")
    p.add_argument("--field", default="text", help="the text field (else prompt/completion or messages)")
    p.add_argument("--report", help="report JSON (default: OUT.report.json)")


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="data-centric methods on JSONL: dedup")
    ps = p.add_subparsers(dest="data_cmd", required=True, metavar="SUBCOMMAND")

    d = ps.add_parser("dedup", help="remove exact or near-duplicate rows (MinHash LSH); keeps first occurrences")
    _common(d)
    d.add_argument("--method", choices=("exact", "minhash"), default="minhash", help="exact: normalized text")
    d.add_argument("--threshold", type=_fraction, default=0.8, help="near duplicates: estimated Jaccard ≥ this")
    d.add_argument("--num-perm", type=_int_at_least(16), default=128, help="MinHash permutations")
    d.add_argument("--ngram", type=_int_at_least(1), default=5, help="word n-gram shingle length")
    d.add_argument("--seed", type=int, default=1, help="MinHash seed")
    d.add_argument("--bands", type=_int_at_least(0), default=0, help="LSH bands (0: chosen for the threshold)")
    d.set_defaults(fn=cmd_dedup)
