"""Healing compressed models: the same student trained on the same data budget by cross-entropy
alone, by knowledge distillation (forward KL, Hinton) and by GKD (on-policy, generalized JSD),
from the dense model as teacher; held-out perplexity before and after each.

    python benchmarks/distill_recovery.py [--model smollm2-135m] [--steps 50] [--students all] [--qat-rows 128]
                                          [--cache runs.json]

Every student is compressed once by ``efflm compress`` and loaded from that directory; every run
trains the same LoRA (r 8, α 16, all seven projections; lr 1e-3, warm-up + cosine, batch 4 × 128
tokens of the calibration split, the same seed and batches), each in its own process. KD and GKD
read the dense model as ``--teacher``; GKD replaces a batch by the student's own continuations
of its first half with probability λ = 0.5 (β 0.5, τ 0.9, trl's defaults). Perplexity is on the
evaluation split (efflm's evaluator), the same for every row.

LLM-QAT (``--qat-rows`` > 0): the dense model writes data-free text (``efflm distill-data``), then
``llm_qat`` at W4 and W3 (group 64) trains on it from the dense model and is packed; it is
compared with GPTQ at the same grid.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from efflm.bench import run_cache

ROOT = Path(__file__).resolve().parents[1]
STUDENTS = {
    "llm_pruner −20%": [{"method": "llm_pruner", "ratio": 0.34}],  # MLP ratio → share of all parameters
    "llm_pruner −34%": [{"method": "llm_pruner", "ratio": 0.59}],  # (results/structured_speed.md)
    "losparse −10%": [{"method": "losparse", "ratio": 0.1}],
    "losparse −20%": [{"method": "losparse", "ratio": 0.2}],
    "sparsegpt 2:4": [{"method": "sparsegpt", "pattern": "2:4"}],
    "gptq W3 g64": [{"method": "gptq", "bits": 3, "group_size": 64}],
}
EXTRA = {"gptq W4 g64": [{"method": "gptq", "bits": 4, "group_size": 64}]}  # LLM-QAT's W4 reference
LORA = {"r": 8, "alpha": 16}
QAT = {  # LLM-QAT at the bits of a GPTQ student, on the teacher's data-free text
    3: {"method": "llm_qat", "bits": 3, "group_size": 64},
    4: {"method": "llm_qat", "bits": 4, "group_size": 64},
}
QAT_LR = 2e-5
PROMPTS = 16  # held-out prompts for the on-policy generation metric
_COMPRESS_LOCKS: dict = {}


def torch_no_grad(fn):
    def wrapped(*a, **kw):
        import torch

        with torch.no_grad():
            return fn(*a, **kw)

    return wrapped


RUNS = {
    "CE": {"method": "lora", **LORA},
    "KD (forward KL)": {"method": "kd", "divergence": "forward_kl", **LORA},
    "GKD (λ 0.5, JSD β 0.5)": {"method": "gkd", "lmbda": 0.5, "beta": 0.5, "temperature": 0.9, **LORA},
}


def worker(args) -> int:
    """One run, printed as RESULT json: ``before`` (the compressed model's perplexity) or a training run."""
    import torch

    from efflm import pipeline, trainer
    from efflm.core import recipe as recipes

    torch.set_num_threads(args.threads)
    if args.run == "qat":
        return qat_worker(args)
    recipe = recipes.from_yaml(yaml.safe_dump({**STUDENTS, **EXTRA}[args.student]))
    spec = args.model
    if args.student_dir:  # the student compressed once, saved by `efflm compress`
        spec, recipe = args.student_dir, []
    if args.run == "before":
        model, tok = pipeline.load_and_apply(spec, recipe)
        ppl = trainer.evaluator("domain", tok, final=True)(model)["ppl"]
        print("RESULT " + json.dumps({"ppl": ppl, "policy_kl": policy_kl(model, tok, args.model)}), flush=True)
        return 0
    train = {"steps": args.steps, "batch": 4, "seq_len": 128, "lr": 1e-3, "warmup": max(1, args.steps // 10),
             "checkpoint_every": 10**6}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="efflm-heal-") as tmp:
        p = Path(tmp) / "m.yaml"
        p.write_text(yaml.safe_dump({**RUNS[args.run], "train": train}))
        cfg, train_cfg = trainer.read_method_recipe(p)
        teacher = args.model if cfg.method in ("kd", "gkd") else None
        r = trainer.finetune(spec, recipe, cfg, train_cfg, "domain", Path(tmp) / "o", teacher=teacher)
        model, tok = trainer.load_model(spec, recipe, Path(tmp) / "o")
        kl = policy_kl(model, tok, args.model)
    print("RESULT " + json.dumps({"ppl": r["ppl"], "policy_kl": kl, "step_s": r["step_s_median"],
                                  "peak_rss_mb": r["peak_rss_mb"], "losses": r["losses"]}), flush=True)  # fmt: skip
    return 0


@torch_no_grad
def policy_kl(model, tok, teacher_spec: str, n: int = PROMPTS, prompt: int = 32, new: int = 64) -> float:
    """Generation quality against the teacher: the student samples ``new`` tokens (τ 1) after
    each of ``n`` held-out prompts; the mean per-token KL(student ‖ teacher) of the next-token
    distributions along those samples (nats). Lower = the student's own text is closer to what
    the teacher would write — the train/generate mismatch GKD's on-policy data targets."""
    import torch

    from efflm import pipeline
    from efflm.datasets import text
    from efflm.inference.generate import SamplingConfig, generate_ids

    model.eval()
    ids = text.eval_tokens(tok, n * prompt)[: n * prompt].view(n, prompt)
    outs, _ = generate_ids(model, None, ids, torch.ones_like(ids, dtype=torch.bool),
                           SamplingConfig(max_new_tokens=new, temperature=1.0, seed=0))  # fmt: skip
    seqs = torch.zeros(n, prompt + new, dtype=ids.dtype)
    keep = torch.zeros(n, prompt + new - 1, dtype=torch.bool)  # positions that predict a sampled token
    for i, g in enumerate(outs):
        row = torch.cat([ids[i], torch.tensor(g.tokens[:new], dtype=ids.dtype)])
        seqs[i, : row.numel()] = row
        keep[i, prompt - 1 : row.numel() - 1] = True
    teacher, _ = pipeline.load_and_apply(teacher_spec, [])
    teacher.eval()
    total = count = 0.0
    for i in range(n):  # one row at a time: two 49k-vocabulary logit tensors stay small
        s = torch.log_softmax(model(seqs[i : i + 1]).logits[0, :-1].float(), -1)[keep[i]]
        t = torch.log_softmax(teacher(seqs[i : i + 1]).logits[0, :-1].float(), -1)[keep[i]]
        total += float((s.exp() * (s - t)).sum())
        count += int(keep[i].sum())
    return total / max(count, 1)


def qat_worker(args) -> int:
    """LLM-QAT at ``args.student`` bits from the dense model, on the teacher's data-free text."""
    from efflm import trainer

    train = {"steps": args.steps, "batch": 4, "seq_len": 128, "lr": QAT_LR, "warmup": max(1, args.steps // 10),
             "checkpoint_every": 10**6}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="efflm-qat-") as tmp:
        p = Path(tmp) / "m.yaml"
        p.write_text(yaml.safe_dump({**QAT[int(args.student)], "train": train}))
        cfg, train_cfg = trainer.read_method_recipe(p)
        r = trainer.finetune(args.model, [], cfg, train_cfg, args.data, Path(tmp) / "o", teacher=args.model)
    print("RESULT " + json.dumps({"ppl": r["ppl"], "step_s": r["step_s_median"], "peak_rss_mb": r["peak_rss_mb"],
                                  "losses": r["losses"]}), flush=True)  # fmt: skip
    return 0


def cached(args, key: str, compute):
    """``compute()``, or its result from ``--cache`` when this run was already measured at this
    same clean commit (a long sweep can stop and go on; a dirty tree never reuses a run)."""
    return run_cache.cached(args.cache, f"{args.model}|{args.steps}|{args.qat_rows}|{key}", compute, __file__)


def run(args, student: str, what: str, data: str | None = None, student_dir: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--student", student, "--run", what, "--model", args.model,
           "--steps", str(args.steps), "--threads", str(args.threads), *(["--data", data] if data else []),
           *(["--student-dir", student_dir] if student_dir else [])]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
    if p.returncode or line is None:
        sys.stderr.write(p.stderr[-3000:])
        raise SystemExit(f"{student} / {what}: worker failed (exit {p.returncode})")
    return json.loads(line[7:])


def student_task(args, tmp: str, names: list[str], student: str, name: str, res: dict):
    """One run of one student, as a callable for the worker pool; each student is compressed once
    (by the first of its runs to start) and every run loads that directory."""
    saved = Path(tmp) / str(names.index(student))

    def measure():
        with _COMPRESS_LOCKS.setdefault(student, threading.Lock()):
            if not saved.exists():
                rfile = Path(tmp) / f"recipe-{names.index(student)}.yaml"
                rfile.write_text(yaml.safe_dump(STUDENTS[student]))
                compress = [sys.executable, "-m", "efflm.cli", "compress", "--model", args.model, "--recipe",
                            str(rfile), "--out", str(saved)]  # fmt: skip
                env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
                subprocess.run(compress, check=True, cwd=ROOT, env=env, capture_output=True)
        return run(args, student, name, student_dir=str(saved))

    def task() -> str:
        res[student][name] = cached(args, f"{student}|{name}", measure)
        return f"{student} / {name}: ppl {res[student][name]['ppl']:.3f}"

    return task


def qat_tasks(args, tmp: str, res: dict, qat: dict) -> list:
    """LLM-QAT at each bit width on the teacher's data-free text (written once, by the first run
    that needs it), and GPTQ's post-training row at the same grid when no student is one."""
    data = str(Path(tmp) / "free.jsonl")
    gen = [sys.executable, "-m", "efflm.cli", "distill-data", "--teacher", args.model, "--n",
           str(args.qat_rows), "--max-new-tokens", "127", "--out", data]  # fmt: skip
    lock = threading.Lock()

    def qat_run(bits: int) -> dict:
        with lock:
            if not Path(data).exists():
                subprocess.run(gen, check=True, cwd=ROOT, capture_output=True)
        return run(args, str(bits), "qat", data)

    def task(bits: int) -> str:
        qat.setdefault(bits, {})["qat"] = cached(args, f"qat|{bits}", lambda: qat_run(bits))
        if f"gptq W{bits} g64" not in res:
            key = f"gptq W{bits} g64|before"
            qat[bits]["gptq_extra"] = cached(args, key, lambda: run(args, f"gptq W{bits} g64", "before"))
        return f"llm_qat W{bits}: ppl {qat[bits]['qat']['ppl']:.3f}"

    return [lambda bits=int(b): task(bits) for b in args.qat_bits.split(",")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each worker")
    ap.add_argument("--jobs", type=int, default=1, help="workers at once (each its own process)")
    ap.add_argument("--students", default="all", help="comma-separated names of STUDENTS, or all")
    ap.add_argument("--qat-bits", default="3,4", help="LLM-QAT bit widths")
    ap.add_argument("--out", default=str(ROOT / "results" / "distill_recovery.md"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--student", help=argparse.SUPPRESS)
    ap.add_argument("--run", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--student-dir", help=argparse.SUPPRESS)
    ap.add_argument("--qat-rows", type=int, default=128, help="rows of data-free teacher text for LLM-QAT")
    ap.add_argument(
        "--cache", help="JSON file of finished runs: rerun at the same clean commit, it goes on where it stopped"
    )
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    from tqdm import tqdm

    names = list(STUDENTS) if args.students == "all" else args.students.split(",")
    res: dict = {s: {} for s in names}
    qat: dict = {}
    with tempfile.TemporaryDirectory(prefix="efflm-students-") as tmp:
        order = [*reversed(RUNS), "before"]  # the longest runs first, so parallel workers end together
        tasks = [student_task(args, tmp, names, s, r, res) for r in order for s in names]
        if args.qat_rows:
            tasks += qat_tasks(args, tmp, res, qat)
        with ThreadPoolExecutor(args.jobs) as pool:
            for line in tqdm(pool.map(lambda t: t(), tasks), total=len(tasks), desc="runs"):
                tqdm.write(line)
        for bits, r in qat.items():  # the GPTQ row at the same grid: the student's own, when it is one
            r["gptq"] = res.get(f"gptq W{bits} g64", {}).get("before") or r.pop("gptq_extra")
    lines = [
        "# Healing compressed models: cross-entropy vs knowledge distillation vs GKD",
        "",
        f"Model `{args.model}` (also the teacher, dense); each student trains LoRA r 8 for {args.steps} steps of "
        "4 × 128 tokens of the calibration split (lr 1e-3), the same batches for every run; held-out perplexity "
        "on the evaluation split."
        + (
            f" Runs went {args.jobs} at a time ({args.threads} threads each): step times in the JSON share the machine."
            if args.jobs > 1
            else ""
        ),
        "",
        "| student | compressed ppl | + CE ppl | + KD ppl | + GKD ppl | best |",
        "|---|---|---|---|---|---|",
    ]
    keys = list(RUNS)
    for student, r in res.items():
        best = min(keys, key=lambda k: r[k]["ppl"])
        lines.append(f"| {student} | {r['before']['ppl']:.3f} | " + " | ".join(f"{r[k]['ppl']:.3f}" for k in keys)
                     + f" | {best.split(' ')[0]} |")  # fmt: skip
    lines += [
        "",
        f"Generation against the teacher: each model samples 64 tokens (τ 1, seed 0) after {PROMPTS} held-out "
        "32-token prompts; mean per-token KL(student ‖ teacher) of the next-token distributions along its own "
        "samples, in nats (lower = its text is closer to what the teacher would write).",
        "",
        "| student | compressed | + CE | + KD | + GKD | best |",
        "|---|---|---|---|---|---|",
    ]
    for student, r in res.items():
        best = min(keys, key=lambda k: r[k]["policy_kl"])
        lines.append(f"| {student} | {r['before']['policy_kl']:.4f} | "
                     + " | ".join(f"{r[k]['policy_kl']:.4f}" for k in keys) + f" | {best.split(' ')[0]} |")  # fmt: skip
    gkd_gen = sum(r["GKD (λ 0.5, JSD β 0.5)"]["policy_kl"] < r["KD (forward KL)"]["policy_kl"] for r in res.values())
    kd_wins = sum(r["KD (forward KL)"]["ppl"] < r["CE"]["ppl"] for r in res.values())
    gkd_wins = sum(r["GKD (λ 0.5, JSD β 0.5)"]["ppl"] < r["KD (forward KL)"]["ppl"] for r in res.values())
    if qat:
        lines += [
            "",
            f"LLM-QAT: the dense model trained through fake quantization for {args.steps} steps of 4 × 128 tokens of "
            f"the teacher's own data-free text ({args.qat_rows} rows; lr {QAT_LR:g}, every weight, KD from the dense "
            "model), then packed; against GPTQ (post-training, 128 calibration windows) at the same grid.",
            "",
            "| bits, group 64 | GPTQ ppl | LLM-QAT ppl | better |",
            "|---|---|---|---|",
        ]
        for bits, r in sorted(qat.items()):
            better = "LLM-QAT" if r["qat"]["ppl"] < r["gptq"]["ppl"] else "GPTQ"
            lines.append(f"| W{bits} | {r['gptq']['ppl']:.3f} | {r['qat']['ppl']:.3f} | {better} |")
    lines += [
        "",
        f"Paper shapes: KD beats CE-only on the same tokens for {kd_wins} of {len(res)} students; GKD (on-policy) "
        f"beats off-policy KD in held-out perplexity for {gkd_wins} of {len(res)} and in generation KL to the "
        f"teacher for {gkd_gen} of {len(res)}."
        + (f" LLM-QAT beats GPTQ at {sum(r['qat']['ppl'] < r['gptq']['ppl'] for r in qat.values())} of {len(qat)} "
           "bit widths." if qat else ""),
    ]  # fmt: skip
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    Path(args.out).with_suffix(".json").write_text(json.dumps({"args": vars(args), "rows": res, "qat": qat}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
