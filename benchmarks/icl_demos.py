"""Demonstrations for in-context learning: k-shot accuracy with random vs KATE demonstrations,
with and without contextual calibration, k ∈ {0, 1, 4, 8}, on a labelled task derived from
real text.

    python benchmarks/icl_demos.py [--model smollm2-135m] [--per-label 12] [--ks 0,1,4,8]

The task: which of the five evaluation plays a passage comes from (labels: Hamlet, Macbeth,
Tempest, Caesar, Midsummer — the file each passage was read from; chance 0.20). Passages are
the plays' paragraphs of at least 30 words, cut to their first 48 words; every third
paragraph of a play is a test candidate, the others form the demonstration pool, so no test
passage is its own demonstration. ``--per-label`` test passages per play are drawn (seeded).
Prompts are ``Input: PASSAGE\\nLabel: PLAY`` blocks (``efflm.data_methods.icl``); a label's
probability is the full likelihood of its tokens, normalized over the five. KATE's encoder is
TF-IDF unless the MiniLM package is installed (the table says which ran). Contextual calibration
divides by the mean distribution of the same prompt on "N/A", "" and "[MASK]".
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PLAYS = {"hamlet": "Hamlet", "macbeth": "Macbeth", "tempest": "Tempest", "julius_caesar": "Caesar",
         "midsummer_nights_dream": "Midsummer"}  # fmt: skip
WORDS = 48


def task(per_label: int, seed: int = 0) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(test, pool): (passage, label) pairs."""
    import re

    from efflm.datasets.text import texts

    files = texts()
    rng = random.Random(seed)
    test, pool = [], []
    for name, label in PLAYS.items():
        blocks = [" ".join(b.split()) for b in re.split(r"\n\s*\n", files[name].read_text(encoding="utf-8"))]
        paras = [" ".join(b.split()[:WORDS]) for b in blocks if len(b.split()) >= 30]
        cands = paras[::3]
        test += [(p, label) for p in rng.sample(cands, min(per_label, len(cands)))]
        pool += [(p, label) for i, p in enumerate(paras) if i % 3]
    return test, pool


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--per-label", type=int, default=12)
    ap.add_argument("--ks", default="0,1,4,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "results" / "icl_demos.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import numpy as np

    from efflm.core.atomic import publish
    from efflm.data_methods import kate, random_demos
    from efflm.data_methods.calibrate_before_use import ContextualCalibrationConfig, calibrate, probs_and_bias
    from efflm.data_methods.context import DataContext
    from efflm.data_methods.icl import Template, item
    from efflm.datasets.embed import encoder
    from efflm.io.load import load

    model, tok = load(args.model)
    test, pool = task(args.per_label)
    labels = sorted(set(PLAYS.values()))
    words = [" " + lab for lab in labels]
    queries = [t for t, _ in test]
    ctx = DataContext(pool=[t for t, _ in pool])
    template, cf = Template(), ContextualCalibrationConfig().content_free
    ks = [int(k) for k in args.ks.split(",")]
    rows = []
    for k in ks:
        selectors = [("random", random_demos.apply(queries, random_demos.RandomDemosConfig(k=k), ctx))]
        if k:
            selectors.append(("KATE", kate.apply(queries, kate.KATEConfig(k=k), ctx)))
        for sel, demos in selectors:
            raw, cal = [], []
            for q, d in zip(queries, demos):
                p, p_cf = probs_and_bias(model, tok, item(template, [pool[i] for i in d], q, cf), words)
                raw.append(labels[int(np.argmax(p))])
                cal.append(labels[int(np.argmax(calibrate(p, p_cf)))])
            gold = [lab for _, lab in test]
            demo_acc = sum(pool[i][1] == g for d, g in zip(demos, gold) for i in d) / max(1, sum(map(len, demos)))
            for calibrated, preds in (("no", raw), ("yes", cal)):
                acc = sum(p == g for p, g in zip(preds, gold)) / len(gold)
                top = max(set(preds), key=preds.count)
                rows.append(
                    (k, sel if k else "—", calibrated, acc, demo_acc if k else None, top, preds.count(top) / len(preds))
                )
    enc = encoder("auto").name
    lines = [
        "# In-context demonstrations: random vs KATE, with and without contextual calibration",
        "",
        f"`python benchmarks/icl_demos.py --model {args.model} --per-label {args.per_label} --ks {args.ks}`. "
        f"Which evaluation play a 48-word passage comes from: {len(test)} test passages ({args.per_label} per play), "
        f"a pool of {len(pool)} labelled passages from the same plays (never a test passage); chance "
        f"{1 / len(labels):.2f}. KATE's encoder here: {enc}. Demo label match: the share of demonstrations whose "
        "label is the test passage's. Most predicted: the label predicted most often, and its share (a biased "
        "model predicts one label for most inputs).",
        "",
        "| k | demonstrations | calibrated | accuracy | demo label match | most predicted |",
        "|---|---|---|---|---|---|",
    ]
    for k, sel, calibrated, acc, demo_acc, top, share in rows:
        match = f"{demo_acc:.2f}" if demo_acc is not None else "—"
        lines.append(f"| {k} | {sel} | {calibrated} | {acc:.3f} | {match} | {top} ({share:.2f}) |")
    return publish(Path(args.out), "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
