"""What data-centric methods do to fine-tuning: deduplication against a corpus with repeated
documents, and data selection toward a target domain — each judged by fine-tuning the same LoRA
on what it keeps, for the same steps.

    python benchmarks/data_effect.py --study dedup   [--model smollm2-135m] [--steps 120]
    python benchmarks/data_effect.py --study select  [--model smollm2-135m] [--steps 120] [--cache runs.json]

dedup: the first ``--docs`` paragraphs of at least 64 words of the calibration split
(Shakespeare, all distinct), ``--repeated`` of them repeated ``--copies`` times each, shuffled (seeded); against the same corpus
after ``efflm data dedup`` (MinHash, J ≥ 0.8). Held-out perplexity on the evaluation split, and
memorization: for every repeated document, its first 32 tokens as the prompt, 32 greedy tokens
— the share reproduced exactly, and the mean number of leading tokens reproduced. The base
model (untrained) is the reference row.

select: the target domain is the Sonnets. Odd-numbered sonnets are the target sample (DSIR's
``--target``), even-numbered ones are held out. The pool is every other calibration paragraph
of at least 40 words: plays and the other poems, no sonnet. Each selector keeps 10% of the
pool through ``efflm data select``. The selectors are DSIR toward the sample, perplexity filtering (the lowest
perplexity under the untrained model), and random; beside them the whole pool. The held-out
metric is perplexity on the held-out sonnets. IFD, which scores instruction/answer pairs, is
measured on efflm's built-in instruction tasks (10% by IFD vs random vs all; held-out task
accuracy).

Every run is ``efflm finetune`` in its own process: LoRA r 8 (α 16, all linear layers), the same
seed, steps, batch 4 × 256 tokens (one row per sequence), lr 2e-4, warm-up + cosine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml

from efflm.bench.run_cache import cached

ROOT = Path(__file__).resolve().parents[1]
LORA = {"method": "lora", "r": 8, "alpha": 16, "target_modules": ["all-linear"]}


def efflm(*args: str, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "EFFLM_PROGRESS": "0",
           "PYTHONPATH": str(ROOT) + (":" + os.environ["PYTHONPATH"] if "PYTHONPATH" in os.environ else "")}  # fmt: skip
    subprocess.run([sys.executable, "-m", "efflm.cli", *args], check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def train(args, data: Path, out: Path) -> Path:
    recipe = {**LORA, "train": {"steps": args.steps, "batch": 4, "seq_len": 256, "lr": 2e-4,
                                "warmup": max(1, args.steps // 10), "seed": 0}}  # fmt: skip
    (out.parent / f"{out.name}.yaml").write_text(yaml.safe_dump(recipe))
    efflm("finetune", "--model", args.model, "--data", str(data), "--method-recipe", str(out.parent / f"{out.name}.yaml"),
          "--out", str(out), "--db", str(out.parent / "scratch.sqlite"), threads=args.threads)  # fmt: skip
    return out


def model_with(args, adapter: Path | None):
    from efflm.io.load import load
    from efflm.trainer import load_model

    return load(args.model) if adapter is None else load_model(args.model, [], adapter)


def memorized(model, tok, docs: list[str], n: int = 32) -> tuple[float, float]:
    """(share of documents whose next n tokens are reproduced exactly, mean leading tokens reproduced)."""
    from efflm.inference.generate import SamplingConfig, generate

    exact, lead = 0, 0
    for d in docs:
        ids = tok(d, add_special_tokens=False)["input_ids"]
        prompt, truth = tok.decode(ids[:n]), ids[n : 2 * n]
        (g,), _ = generate(model, tok, [prompt], SamplingConfig(max_new_tokens=len(truth)))
        same = next((i for i, (a, b) in enumerate(zip(g.tokens, truth)) if a != b), min(len(g.tokens), len(truth)))
        exact += same == len(truth)
        lead += same
    return exact / len(docs), lead / len(docs)


def ppl_on(model, tok, text: str) -> float:
    from efflm.datasets.text import tokenize
    from efflm.eval.metrics import perplexity

    ids = tokenize(tok, text).flatten()
    return perplexity(model, ids, 256, 8)["ppl"]  # up to 8 windows of 256 tokens


def eval_ppl(model, tok) -> float:
    from efflm.trainer.batches import evaluator

    return evaluator("domain", tok, final=True)(model)["ppl"]


def study_dedup(args, tmp: Path) -> str:
    from efflm.datasets.text import paragraphs

    docs = [d for d in paragraphs("calib") if len(d.split()) >= 64][: args.docs]
    rng = random.Random(0)
    repeated = rng.sample(docs, args.repeated)
    corpus = docs + [d for d in repeated for _ in range(args.copies - 1)]
    rng.shuffle(corpus)
    raw = write_jsonl(tmp / "repeated.jsonl", corpus)
    efflm("data", "dedup", str(raw), "--out", str(tmp / "dedup.jsonl"), threads=args.threads)
    kept = sum(1 for _ in (tmp / "dedup.jsonl").open())
    rows = [("base model (untrained)", None, None)]
    for name, data in (("trained on the repeated corpus", raw), ("trained on it deduplicated", tmp / "dedup.jsonl")):
        rows.append((name, data, train(args, data, tmp / name.split()[-1])))
    lines = [
        "# Deduplication's effect on fine-tuning",
        "",
        f"`python benchmarks/data_effect.py --study dedup --model {args.model} --steps {args.steps} --docs {args.docs} "
        f"--repeated {args.repeated} --copies {args.copies}`. Corpus: {args.docs} "
        f"distinct calibration paragraphs (≥ 64 words) plus {args.repeated} of them repeated {args.copies}× each: {len(corpus)} "
        f"rows; `efflm data dedup` keeps {kept}. LoRA r 8, {args.steps} steps of 4 × 256 tokens, the same seed. "
        f"Memorization: each repeated document's first 32 tokens as the prompt, 32 greedy tokens.",
        "",
        "| model | rows | held-out ppl (evaluation split) | repeated docs reproduced exactly | mean tokens reproduced (of 32) |",
        "|---|---|---|---|---|",
    ]
    for name, data, adapter in rows:
        model, tok = model_with(args, adapter)
        exact, lead = memorized(model, tok, repeated)
        n = "—" if data is None else str(sum(1 for _ in data.open()))
        lines.append(f"| {name} | {n} | {eval_ppl(model, tok):.3f} | {exact:.2f} | {lead:.1f} |")
    return "\n".join(lines)


def selections(
    args, pool: Path, tmp: Path, prefix: str, selectors: list[tuple[str, list[str]]]
) -> list[tuple[str, Callable[[], Path]]]:
    """(label, a function making the file) of 10% of ``pool`` kept by each selector through
    ``efflm data select``; a selection is made only when a run needs it (not when cached)."""

    def make(label: str, extra: list[str]) -> Path:
        out = tmp / (prefix + label.split()[0].lower() + ".jsonl")
        efflm("data", "select", str(pool), "--out", str(out), "--budget", "0.1", *extra, threads=args.threads)
        return out

    return [(label, lambda label=label, extra=extra: make(label, extra)) for label, extra in selectors]


def sonnets() -> tuple[list[str], list[str]]:
    from efflm.datasets.text import texts

    raw = texts()["sonnets"].read_text(encoding="utf-8")
    parts = [" ".join(p.split()) for p in re.split(r"\n\s*\n", raw) if len(p.split()) >= 40]
    return parts[0::2], parts[1::2]


def study_select(args, tmp: Path) -> str:
    from efflm.datasets.text import texts

    sample, held = sonnets()
    pool = []
    for name, path in texts().items():
        if name in ("sonnets", "hamlet", "macbeth", "tempest", "julius_caesar", "midsummer_nights_dream"):
            continue
        pool += [
            " ".join(p.split()) for p in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")) if len(p.split()) >= 40
        ]
    pool = pool[: args.pool_limit] if args.pool_limit else pool
    pool_file, target = write_jsonl(tmp / "pool.jsonl", pool), write_jsonl(tmp / "target.jsonl", sample)
    runs = [("whole pool (100%)", lambda: pool_file)] + selections(args, pool_file, tmp, "", [
        ("random 10%", ["--method", "random"]),
        ("DSIR 10% (toward the sample)", ["--method", "dsir", "--target", str(target)]),
        ("perplexity filter 10% (lowest)", ["--method", "ppl_filter", "--model", args.model]),
    ])  # fmt: skip
    held_text = "\n\n".join(held)

    def measure(data: Path | None) -> dict:
        model, tok = model_with(args, None if data is None else train(args, data, tmp / ("run_" + data.stem)))
        rows = None if data is None else sum(1 for _ in data.open())
        return {"rows": rows, "held": ppl_on(model, tok, held_text), "eval": eval_ppl(model, tok)}

    key = f"{args.model}|{args.steps}|{args.pool_limit}|select"
    base = cached(args.cache, f"{key}|untrained", lambda: measure(None), __file__)
    lines = [
        "# Data selection's effect on fine-tuning toward a target domain",
        "",
        f"`python benchmarks/data_effect.py --study select --model {args.model} --steps {args.steps}`. Target: the "
        f"Sonnets ({len(sample)} odd-numbered as DSIR's target sample, {len(held)} even-numbered held out). Pool: "
        f"{len(pool)} paragraphs (≥ 40 words) of the other calibration texts, no sonnet. Each selector keeps 10% "
        f"through `efflm data select`; LoRA r 8, {args.steps} steps of 4 × 256 tokens, the same seed for every run. "
        "Held-out sonnets ppl: 8 windows of 256 tokens of the held-out sonnets.",
        "",
        "| training data | rows | held-out sonnets ppl | evaluation-split ppl |",
        "|---|---|---|---|",
        f"| none (untrained) | — | {base['held']:.3f} | {base['eval']:.3f} |",
    ]
    for label, data in runs:
        r = cached(args.cache, f"{key}|{label}", lambda data=data: measure(data()), __file__)
        lines.append(f"| {label} | {r['rows']} | {r['held']:.3f} | {r['eval']:.3f} |")
    lines += ["", *study_ifd(args, tmp)]
    return "\n".join(lines)


def study_ifd(args, tmp: Path) -> list[str]:
    """IFD needs instruction data: efflm's built-in instruction tasks (generated arithmetic,
    sorting and unit problems, ``--data tasks``): 10% of the training problems by IFD under the
    untrained model vs random vs all, held-out accuracy on the 100 test problems."""
    from efflm.datasets.finetune import tasks
    from efflm.trainer.batches import N_TEST_TASKS, N_TRAIN_TASKS, evaluator

    train_rows = tasks("train", args.pool_limit or N_TRAIN_TASKS)
    pool = tmp / "tasks.jsonl"
    pool.write_text("".join(json.dumps({"prompt": t.prompt, "completion": t.answer}) + "\n" for t in train_rows))
    runs = [("all problems (100%)", lambda: pool)] + selections(args, pool, tmp, "tasks_", [
        ("random 10%", ["--method", "random"]),
        ("IFD 10% (highest)", ["--method", "ifd", "--model", args.model]),
    ])  # fmt: skip

    def measure(data: Path | None) -> dict:
        model, tok = model_with(args, None if data is None else train(args, data, tmp / ("run_" + data.stem)))
        rows = None if data is None else sum(1 for _ in data.open())
        return {"rows": rows, "acc": evaluator("tasks", tok, final=True)(model)["task_acc"]}

    key = f"{args.model}|{args.steps}|{args.pool_limit}|ifd"
    lines = [
        f"Instruction data (IFD scores instruction/answer pairs): efflm's built-in instruction tasks — generated "
        f"arithmetic, sorting and unit-conversion problems, not real text — {len(train_rows)} training problems; "
        f"held-out accuracy on the {N_TEST_TASKS} test problems (exact match); the same LoRA and steps.",
        "",
        "| training data | rows | held-out task accuracy |",
        "|---|---|---|",
        f"| none (untrained) | — | {cached(args.cache, f'{key}|untrained', lambda: measure(None), __file__)['acc']:.3f} |",
    ]
    for label, data in runs:
        r = cached(args.cache, f"{key}|{label}", lambda data=data: measure(data()), __file__)
        lines.append(f"| {label} | {r['rows']} | {r['acc']:.3f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", choices=("dedup", "select"), required=True)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--docs", type=int, default=2000, help="dedup: distinct documents")
    ap.add_argument("--repeated", type=int, default=20, help="dedup: documents repeated")
    ap.add_argument("--copies", type=int, default=50, help="dedup: copies of each repeated document")
    ap.add_argument("--pool-limit", type=int, default=0, help="select: pool paragraphs used (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", help="select: JSON file of finished runs; rerun at the same clean commit, it goes on")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    import torch

    from efflm.core.atomic import publish

    torch.set_num_threads(args.threads)
    out = Path(args.out or ROOT / "results" / f"{'dedup' if args.study == 'dedup' else 'selection'}_effect.md")
    with tempfile.TemporaryDirectory() as tmp:
        text = (study_dedup if args.study == "dedup" else study_select)(args, Path(tmp))
    return publish(out, text)


if __name__ == "__main__":
    sys.exit(main())
