"""Deduplication quality and speed: precision and recall against planted near-duplicates in real
text, documents/s and peak memory, for exact and MinHash deduplication (``efflm data dedup``)
side by side with datatrove's MinHash pipeline on the same input.

    python benchmarks/dedup_quality.py [--docs 0] [--rounds 3] [--out results/dedup_quality.md]

Input: the calibration split's paragraphs of ≥ 40 words (Shakespeare, ``efflm.datasets.text.
paragraphs``; all distinct), with edited copies of 20% of them planted at later positions
(``efflm.data_methods.plant``: word swaps, insertions, deletions, re-casing; copies cycle through the
edit rates in ``RATES``). Each original and its one copy form a group. A removal is correct
when exactly one document of a group is removed; precision = correct / removed, recall =
correct / groups (and per edit rate).

Every row is its own subprocess (peak RSS is its ``ru_maxrss``, imports included) and runs the
whole job, JSONL file in to JSONL file out: efflm runs the ``efflm data dedup`` command
(which reads the input twice: once to validate it, once to deduplicate it); datatrove runs its
four MinHash stages (signatures, buckets, clusters, filter) with ``LocalPipelineExecutor``, one
worker. Both sides hash 5-word shingles with 32-bit SHA-1 (datasketch's default; datatrove's
``HashConfig(precision=32, hash_fc="sha1")``), 112 permutations in 14 bands of 8 — datatrove's
default banding, whose S-curve crosses 1/2 near Jaccard 0.72 — and efflm verifies each
candidate by its Jaccard estimate ≥ 0.72 where datatrove takes every bucket match; other efflm
rows use 128 permutations and the bands datasketch picks for the threshold. Imports happen before the clock starts. Rounds are
interleaved; documents/s is the median round.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RATES = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)
SHARE = 0.2
# name: (what runs, efflm data dedup options or "datatrove")
ROWS = {
    "exact": ("efflm exact (normalized text)", ["--method", "exact"]),
    "minhash_0.5": ("efflm MinHash J ≥ 0.5", ["--threshold", "0.5"]),
    "minhash_0.7": ("efflm MinHash J ≥ 0.7", ["--threshold", "0.7"]),
    "minhash_0.8": ("efflm MinHash J ≥ 0.8 (default)", ["--threshold", "0.8"]),
    "minhash_0.9": ("efflm MinHash J ≥ 0.9", ["--threshold", "0.9"]),
    "minhash_dt": ("efflm MinHash, datatrove's banding (14 × 8), J ≥ 0.72",
                   ["--threshold", "0.72", "--num-perm", "112", "--bands", "14"]),
    "datatrove": ("datatrove MinHash (14 × 8 buckets, no verification)", "datatrove"),
}  # fmt: skip


def make_input(path: Path, n_docs: int) -> list:
    from efflm.data_methods.plant import plant
    from efflm.datasets.text import paragraphs

    docs = paragraphs("calib")
    docs = docs[:n_docs] if n_docs else docs
    texts, truth = plant(docs, SHARE, RATES, seed=0)
    with path.open("w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": str(i), "text": t}) + "\n")
    return truth


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


def run_datatrove(src: Path, work: Path) -> None:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers.jsonl import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    cfg = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8, seed=1,
                        hash_config=HashConfig(precision=32, hash_fc="sha1"))  # fmt: skip
    stages = [
        ([JsonlReader(str(src.parent), glob_pattern=src.name), MinhashDedupSignature(str(work / "sig"), config=cfg)], 1),
        ([MinhashDedupBuckets(str(work / "sig"), str(work / "buckets"), config=cfg)], cfg.num_buckets),
        ([MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=cfg)], 1),
        ([JsonlReader(str(src.parent), glob_pattern=src.name), MinhashDedupFilter(str(work / "remove")),
          JsonlWriter(str(work / "out"), compression=None)], 1),
    ]  # fmt: skip
    for pipeline, tasks in stages:
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1, logging_dir=str(work / "logs"),
                              skip_completed=False).run()  # fmt: skip


def worker(args) -> int:
    """One row: deduplicate args.data, print {seconds, kept ids, peak RSS}. Imports happen before
    the clock starts, on both sides."""
    src = Path(args.data)
    dt = ROWS[args.worker][1] == "datatrove"
    if dt:
        import logging

        import datatrove.pipeline.dedup.minhash  # noqa: F401
        from loguru import logger

        logger.remove()
        logging.disable(logging.WARNING)
    else:
        import datasketch  # noqa: F401

        import efflm.data_methods.dedup  # noqa: F401
        from efflm.cli import main as efflm_main
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        if dt:
            run_datatrove(src, work)
            outs = sorted((work / "out").glob("*.jsonl"))
        else:
            out = work / "out.jsonl"
            rc = efflm_main(["data", "dedup", str(src), "--out", str(out), *ROWS[args.worker][1]])
            if rc:
                return rc
            outs = [out]
        seconds = time.perf_counter() - t0
        kept = [json.loads(line)["id"] for p in outs for line in p.read_text().splitlines()]
    print("RESULT " + json.dumps({"seconds": seconds, "kept": kept, "peak_rss_mb": peak_rss_mb()}))
    return 0


def score(truth: list, kept_ids: list[str]) -> dict:
    kept = {int(i) for i in kept_ids}
    removed = set(range(len(truth))) - kept
    groups = [(i, t[0], t[1]) for i, t in enumerate(truth) if t is not None]  # (copy, original, rate)
    found = {copy: ((copy in removed) + (orig in removed)) == 1 for copy, orig, _ in groups}
    correct = sum(found.values())
    by_rate = {r: [found[c] for c, _, rr in groups if rr == r] for r in RATES}
    return {
        "removed": len(removed),
        "precision": correct / len(removed) if removed else 1.0,
        "recall": correct / len(groups),
        "recall_by_rate": {str(r): sum(v) / len(v) for r, v in by_rate.items() if v},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=0, help="originals used (0: all)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows")
    ap.add_argument("--out", default=str(ROOT / "results" / "dedup_quality.md"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    from efflm.core.atomic import publish
    from efflm.core.progress import progress

    names = [r for r in args.rows.split(",") if r]
    if "datatrove" in names:
        try:
            import datatrove  # noqa: F401
        except ImportError:
            print("datatrove not installed: its row is skipped (pip install -e '.[anchors]')")
            names.remove("datatrove")
    results: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "planted.jsonl"
        truth = make_input(src, args.docs)
        bar = progress(None, "dedup rows", total=args.rounds * len(names))
        for _ in range(args.rounds):  # interleaved rounds
            for n in names:
                cmd = [sys.executable, __file__, "--worker", n, "--data", str(src)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env={**_env(), "EFFLM_PROGRESS": "0"})
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if proc.returncode or line is None:
                    raise SystemExit(f"{n} failed:\n{proc.stderr[-2000:]}")
                results[n].append(json.loads(line[7:]))
                bar.update(1)
        bar.close()
    n_docs = len(truth)
    table = render(names, results, truth, n_docs, args)
    atomic_json(Path(args.out).with_suffix(".json"), names, results, truth, n_docs)
    return publish(Path(args.out), table)


def _env() -> dict:
    import os

    return {
        **os.environ,
        "PYTHONPATH": str(ROOT) + (":" + os.environ["PYTHONPATH"] if "PYTHONPATH" in os.environ else ""),
    }


def summary(runs: list[dict], truth: list, n_docs: int) -> dict:
    s = score(truth, runs[0]["kept"])
    assert all(r["kept"] == runs[0]["kept"] for r in runs), "a row kept different documents in two rounds"
    sec = statistics.median(r["seconds"] for r in runs)
    return {**s, "docs_per_s": n_docs / sec, "seconds": sec, "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}


def render(names, results, truth, n_docs, args) -> str:
    groups = sum(t is not None for t in truth)
    head = ["row", "what runs", "removed", "precision", "recall"] + [f"recall @ {r:g}" for r in RATES]
    head += ["docs/s", "peak RSS MB"]
    lines = [
        "# Deduplication: planted near-duplicates in real text",
        "",
        f"`python benchmarks/dedup_quality.py --rounds {args.rounds}"
        + (f" --docs {args.docs}" if args.docs else "")
        + "`. "
        f"{n_docs} documents: {n_docs - groups} distinct paragraphs of the calibration split and {groups} "
        f"planted copies ({SHARE:.0%} of them), edit rates cycling through {', '.join(f'{r:g}' for r in RATES)} "
        "(word swaps, insertions, deletions, re-casing). A removal is correct when exactly one document of an "
        "original + copy pair is removed. Every row is a subprocess running the whole job, JSONL in to JSONL out; "
        f"docs/s is the median of {args.rounds} interleaved rounds; peak RSS includes the imports.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for n in names:
        s = summary(results[n], truth, n_docs)
        cells = [n, ROWS[n][0], str(s["removed"]), f"{s['precision']:.3f}", f"{s['recall']:.3f}"]
        cells += [f"{s['recall_by_rate'].get(str(r), float('nan')):.2f}" for r in RATES]
        cells += [f"{s['docs_per_s']:.0f}", f"{s['peak_rss_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def atomic_json(path: Path, names, results, truth, n_docs) -> None:
    from efflm.core.atomic import atomic_write_text

    data = {n: {k: v for k, v in summary(results[n], truth, n_docs).items()} for n in names}
    atomic_write_text(path, json.dumps({"rows": data, "what": {n: ROWS[n][0] for n in names}}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
