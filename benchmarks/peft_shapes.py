"""The papers' shapes on the default model, and LoRA recovery of compressed models.

    python benchmarks/peft_shapes.py [--study shapes,tasks,recovery] [--steps 40] [--recovery-steps 100]

Every run is ``efflm finetune --data domain`` in its own process (peak RSS its own); the recovery
runs are recorded in the results database (``--db``) as leaderboard rows (the shape runs in a
scratch one), on the same batches (calibration split,
``batch × seq_len`` tokens per step, seed 0), AdamW with warm-up + cosine. Held-out: perplexity
on 4 × 512 tokens of the evaluation split, the leaderboard's windows.

Shapes: DoRA against LoRA at r = 4 and 8; LoRA-FA's peak memory against LoRA's at r = 8; one
DyLoRA run (r = 8) truncated to r ∈ {1, 2, 4, 8} against LoRA trained at each rank; prompt
tuning and (IA)³ against LoRA; QLoRA (NF4 base) against LoRA on the fp32 base, with base bytes.
Recovery: LoRA r = 8 on LLM-Pruner −20%, SparseGPT 50%, GPTQ W3 g64 and LoSparse −10%: how much of
each perplexity gap to the dense model comes back.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LR = {"prompt_tuning": 1e-2, "ia3": 1e-2}
SHAPES = [
    ("lora r=1", {"method": "lora", "r": 1, "alpha": 2}),
    ("lora r=2", {"method": "lora", "r": 2, "alpha": 4}),
    ("lora r=4", {"method": "lora", "r": 4, "alpha": 8}),
    ("lora r=8", {"method": "lora", "r": 8, "alpha": 16}),
    ("dora r=4", {"method": "dora", "r": 4, "alpha": 8}),
    ("dora r=8", {"method": "dora", "r": 8, "alpha": 16}),
    ("lora_fa r=8", {"method": "lora_fa", "r": 8, "alpha": 16}),
    ("dylora r=8", {"method": "dylora", "r": 8, "alpha": 16}),
    ("qlora r=8", {"method": "qlora", "r": 8, "alpha": 16}),
    ("ia3", {"method": "ia3"}),
    ("prompt_tuning n=20", {"method": "prompt_tuning", "n_virtual": 20}),
]
RECOVERY_LABELS = {"llm_pruner": "llm_pruner −20%", "sparsegpt": "sparsegpt 50%", "gptq": "gptq W3 g64",
                   "losparse": "losparse −10%"}  # fmt: skip


def finetune(
    args, tune: dict, steps: int, out: Path, recipe: list | None = None, db: str | None = None, data: str = "domain",
    train: dict | None = None,
) -> dict:  # fmt: skip
    """One ``efflm finetune`` process (its row in ``db``, else a scratch database); its metrics."""
    tmp = out.parent
    train = train or {"batch": args.batch, "seq_len": args.seq_len, "lr": LR.get(tune["method"], args.lr),
                      "warmup": max(1, steps // 10)}  # fmt: skip
    method = {**tune, "train": {**train, "steps": steps}}
    (tmp / f"{out.name}.yaml").write_text(yaml.safe_dump(method))
    cmd = [sys.executable, "-m", "efflm.cli", "finetune", "--model", args.model, "--data", data,
           "--method-recipe", str(tmp / f"{out.name}.yaml"), "--out", str(out), "--db", db or str(tmp / "scratch.sqlite")]  # fmt: skip
    if recipe:
        (tmp / f"{out.name}-base.yaml").write_text(yaml.safe_dump(recipe))
        cmd += ["--recipe", str(tmp / f"{out.name}-base.yaml")]
    env = {"OMP_NUM_THREADS": str(args.threads)}
    subprocess.run(cmd, check=True, cwd=ROOT, env={**__import__("os").environ, **env})
    return json.loads((out / "efflm_adapter.json").read_text())["metrics"]


def base_ppl(args, recipe: list) -> tuple[float, int]:
    """Perplexity (leaderboard windows) and bytes of the base after ``recipe``, no training."""
    from efflm import pipeline
    from efflm.core.recipe import from_yaml
    from efflm.eval.metrics import model_bytes
    from efflm.trainer.batches import EVAL_SEQ_LEN, EVAL_WINDOWS, evaluator

    model, tok = pipeline.load_and_apply(args.model, from_yaml(yaml.safe_dump(recipe)) if recipe else [])
    return evaluator("domain", tok, final=True)(model)["ppl"], model_bytes(model), (EVAL_SEQ_LEN, EVAL_WINDOWS)


def truncated_ppl(args, adapter: Path, rank: int) -> float:
    from efflm.finetune.dylora import set_rank
    from efflm.trainer import evaluator, load_model

    model, tok = load_model(args.model, [], adapter)
    set_rank(model, rank)
    return evaluator("domain", tok, final=True)(model)["ppl"]


def shapes(args, tmp: Path) -> str:
    dense_ppl, dense_bytes, _ = base_ppl(args, [])
    chosen = [(label, tune) for label, tune in SHAPES if not args.only or label in args.only]
    runs = {
        label: finetune(args, tune, args.steps, tmp / label.replace(" ", "_").replace("=", ""))
        for label, tune in chosen
    }
    dy = tmp / "dylora_r8"
    lines = [
        f"Model `{args.model}` (fp32 unless noted); {args.steps} steps of {args.batch} × {args.seq_len} tokens of the "
        f"calibration split; lr {args.lr:g} (prompt tuning and (IA)³ {LR['prompt_tuning']:g}), warm-up + cosine; "
        f"held-out perplexity on the evaluation split (before training: {dense_ppl:.3f}). One run each.\n",
        "| run | trainable params | base MB | final train loss | held-out ppl | Δ vs untrained | peak RSS MB | step s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r in runs.items():
        base_mb = r["base_bytes"] / 1e6
        lines.append(
            f"| {label} | {r['trainable_params']:,} | {base_mb:.0f} | {r['final_loss']:.4f} | "
            f"{r['ppl']:.3f} | {(r['ppl'] / dense_ppl - 1) * 100:+.1f}% | {r['peak_rss_mb']:.0f} | {r['step_s']:.2f} |"
        )
    if "dylora r=8" in runs:
        lines += ["", "DyLoRA: one run (r = 8) truncated, against LoRA trained at each rank:", "",
                  "| rank | DyLoRA truncated ppl | LoRA trained at that rank ppl |", "|---|---|---|"]  # fmt: skip
        for rank in (1, 2, 4, 8):
            lora = runs.get(f"lora r={rank}", {}).get("ppl")
            lines.append(f"| {rank} | {truncated_ppl(args, dy, rank):.3f} | {'–' if lora is None else f'{lora:.3f}'} |")
    if "qlora r=8" not in runs or "lora r=8" not in runs:
        return "\n".join(lines) + "\n"
    q, l8 = runs["qlora r=8"], runs["lora r=8"]
    lines += [
        "",
        f"QLoRA: base {q['base_bytes'] / 1e6:.0f} MB (NF4 decoder Linears) vs {l8['base_bytes'] / 1e6:.0f} MB "
        f"(fp32) = {q['base_bytes'] / l8['base_bytes']:.2f}× the bytes; held-out {q['ppl']:.3f} vs {l8['ppl']:.3f} "
        f"({(q['ppl'] / l8['ppl'] - 1) * 100:+.1f}%). Dense fp32 model bytes: {dense_bytes / 1e6:.0f} MB.",
    ]
    return "\n".join(lines) + "\n"


def recovery(args, tmp: Path) -> str:
    """The runs of ``efflm bench --suite finetune`` (same bases, same LoRA and training), tabulated."""
    from efflm.bench.suites import finetune_suite
    from efflm.trainer.run import RECOVERY_TRAIN, RECOVERY_TUNE

    dense_ppl, _, _ = base_ppl(args, [])
    t = RECOVERY_TRAIN
    lines = [
        f"Model `{args.model}`; the recovery runs of `efflm bench --suite finetune`: LoRA r = {RECOVERY_TUNE['r']} (α "
        f"{RECOVERY_TUNE['alpha']:g}, all seven projections) on each compressed base, {args.recovery_steps} steps of "
        f"{t['batch']} × {t['seq_len']} tokens of the calibration split, lr {t['lr']:g}; held-out perplexity on the "
        f"evaluation split (dense, untrained: {dense_ppl:.3f}). Recovered: the share of the gap to dense closed. "
        "Each run is also a leaderboard row.\n",
        "| base | compressed ppl | + LoRA ppl | recovered | adapter params | dense, same LoRA |",
        "|---|---|---|---|---|---|",
    ]
    lora, train = dict(RECOVERY_TUNE), dict(RECOVERY_TRAIN)
    bases = [[c.to_dict() for c in r] for r in finetune_suite()]
    dense_tuned = finetune(args, lora, args.recovery_steps, tmp / "recover_dense", bases[0], args.db, train=train)[
        "ppl"
    ]
    for recipe in bases[1:]:
        label = RECOVERY_LABELS[recipe[0]["method"]]
        if args.only and label not in args.only:
            continue
        before, _, _ = base_ppl(args, recipe)
        r = finetune(
            args, lora, args.recovery_steps, tmp / f"recover_{recipe[0]['method']}", recipe, args.db, train=train
        )
        gap = before - dense_ppl
        share = (before - r["ppl"]) / gap * 100 if gap > 0 else float("nan")
        lines.append(
            f"| {label} | {before:.3f} | {r['ppl']:.3f} | {share:.0f}% | {r['trainable_params']:,} | {dense_tuned:.3f} |"
        )
    return "\n".join(lines) + "\n"


def tasks(args, tmp: Path) -> str:
    """The built-in instruction tasks: the untrained model's exact-match accuracy, then LoRA's."""
    from efflm import pipeline
    from efflm.trainer.batches import N_TEST_TASKS, evaluator

    model, tok = pipeline.load_and_apply(args.model, [])
    before = evaluator("tasks", tok, final=True)(model)
    after = finetune(args, {"method": "lora", "r": 8, "alpha": 16}, args.task_steps, tmp / "tasks_lora", data="tasks")
    kinds = sorted(k.removeprefix("task_acc_") for k in before if k.startswith("task_acc_"))
    lines = [
        f"Exact-match accuracy on {N_TEST_TASKS} held-out problems (train and test disjoint by construction); LoRA r = 8 "
        f"trained {args.task_steps} steps of {args.batch} examples on the train problems (`--data tasks`).\n",
        "| model | all | " + " | ".join(kinds) + " |",
        "|---|---|" + "---|" * len(kinds),
    ]
    for name, r in (("untrained", before), ("+ LoRA r=8", after)):
        lines.append(
            f"| {name} | {r['task_acc']:.0%} | " + " | ".join(f"{r[f'task_acc_{k}']:.0%}" for k in kinds) + " |"
        )
    return "\n".join(lines) + "\n"


def _studies(value: str) -> set[str]:
    chosen = set(value.split(","))
    if not chosen <= {"shapes", "tasks", "recovery"}:
        raise argparse.ArgumentTypeError(f"unknown study in {value!r} (shapes, tasks, recovery)")
    return chosen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument(
        "--study", type=_studies, default="shapes,tasks,recovery", help="comma-separated: shapes, tasks, recovery"
    )
    p.add_argument("--task-steps", type=int, default=60)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--recovery-steps", type=int, default=100, help="(efflm bench --suite finetune trains 100)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--db", default=str(ROOT / "results" / "efflm.sqlite"), help="where the recovery rows go")
    p.add_argument("--out", default=str(ROOT / "results" / "peft_shapes.md"), help="shapes and tasks")
    p.add_argument("--recovery-out", default=str(ROOT / "results" / "peft_recovery.md"))
    p.add_argument("--only", type=lambda v: set(v.split(",")), help="comma-separated run labels (default: all)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    parts = []
    with tempfile.TemporaryDirectory(prefix="efflm-shapes-") as tmp:
        if "shapes" in args.study:
            parts.append("### Shapes\n\n" + shapes(args, Path(tmp)))
        if "tasks" in args.study:
            parts.append("### Instruction tasks\n\n" + tasks(args, Path(tmp)))
        rec = recovery(args, Path(tmp)) if "recovery" in args.study else None
    for path, md in ((args.out, "\n".join(parts)), (args.recovery_out, rec)):
        if md:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(md)
            print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
