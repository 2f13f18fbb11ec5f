"""efflm's GKD against trl's ``GKDTrainer`` on one student/teacher pair, side by side: step time,
peak RSS and the student's held-out perplexity and task accuracy after the same steps.

    python benchmarks/vs_trl_gkd.py [--model smollm2-135m] [--steps 20]

Both sides: teacher = the dense model; student = the same model pruned by LLM-Pruner (ratio
0.34, −20% of the parameters) made by efflm and handed to each side in memory; the student trains
the same LoRA (r 8, α 16, all seven projections) with AdamW (lr 1e-3, warm-up + cosine, clip 1.0)
on the same chat rows (efflm's built-in instruction tasks as ``{"messages"}``) in batches of 4,
λ 0.5, β 0.5, τ 0.9, at most 16 new tokens per on-policy continuation, fp32, the same threads.
Each side in its own process (peak RSS its own, model loads included).

* efflm: ``efflm finetune --method-recipe gkd.yaml --teacher MODEL --data rows.jsonl`` (chunked
  divergence through the head, continuations from efflm's decode path);
* trl: ``trl.experimental.gkd.GKDTrainer`` with a peft ``LoraConfig`` (full logits of both
  models, continuations from transformers' ``generate``).

Which steps are on-policy is each side's own draw with probability λ (trl uses Python's
``random``), so the two see different on-policy batches; both report how many they took.
Step time is the median over the steps after the first. Perplexity is on the evaluation split
and task accuracy on the 100 held-out problems, both by efflm's evaluator on the merged student.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
STUDENT = [{"method": "llm_pruner", "ratio": 0.34}]
LORA = {"r": 8, "alpha": 16}
GKD = {"lmbda": 0.5, "beta": 0.5, "temperature": 0.9}
NEW_TOKENS, SEQ_LEN, BATCH, LR = 16, 128, 4, 1e-3


def rows_file(tok, path: Path, n: int) -> None:
    from efflm.datasets import finetune as ftdata

    rows = [{"messages": [{"role": "user", "content": t.prompt}, {"role": "assistant", "content": t.answer}]}
            for t in ftdata.tasks("train", n)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def evaluate(model, tok) -> dict:
    from efflm import trainer

    return trainer.evaluator("tasks", tok, final=True)(model)


def run_efflm(args, data: Path) -> dict:
    from efflm import trainer
    from efflm.core import recipe as recipes
    from efflm.distill import gkd

    generate, on_policy = gkd.on_policy, []
    gkd.on_policy = lambda *a: on_policy.append(1) or generate(*a)  # counted, else as is
    train = {"steps": args.steps, "batch": BATCH, "seq_len": SEQ_LEN, "lr": LR, "warmup": max(1, args.steps // 10),
             "max_grad_norm": 1.0, "checkpoint_every": 10**6}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="efflm-gkd-") as tmp:
        p = Path(tmp) / "gkd.yaml"
        p.write_text(yaml.safe_dump({"method": "gkd", **GKD, **LORA, "train": train}))
        cfg, train_cfg = trainer.read_method_recipe(p)
        recipe = recipes.from_yaml(yaml.safe_dump(STUDENT))
        r = trainer.finetune(args.model, recipe, cfg, train_cfg, str(data), Path(tmp) / "o", teacher=args.model)
        peak = r["peak_rss_mb"]  # training's peak, before the evaluation below
        model, tok = trainer.load_model(args.model, recipe, Path(tmp) / "o")
    out = evaluate(model, tok)
    return {"step_s": r["step_s_median"], "peak_rss_mb": peak, "ppl": out["ppl"], "task_acc": out["task_acc"],
            "losses": r["losses"], "on_policy": len(on_policy)}  # fmt: skip


def run_trl(args, data: Path) -> dict:
    import datasets
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from efflm import pipeline
    from efflm.core import recipe as recipes
    from efflm.eval.metrics import peak_rss_mb
    from efflm.finetune.adapter import linear_names

    student, tok = pipeline.load_and_apply(args.model, recipes.from_yaml(yaml.safe_dump(STUDENT)))
    teacher, _ = pipeline.load_and_apply(args.model, [])
    student.requires_grad_(True)
    if tok.pad_token is None:  # trl's collator wants one (SmolLM2 has none); pads are masked out either way
        tok.pad_token = tok.eos_token
    ds = datasets.Dataset.from_list([json.loads(x) for x in data.read_text().splitlines()])
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)

    with tempfile.TemporaryDirectory(prefix="trl-gkd-") as tmp:
        cfg = GKDConfig(
            output_dir=tmp, max_steps=args.steps, per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
            learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=max(1, args.steps // 10), max_grad_norm=1.0,
            weight_decay=0.0, max_new_tokens=NEW_TOKENS, max_length=SEQ_LEN, save_strategy="no", report_to=[],
            logging_steps=1, use_cpu=True, seed=0, bf16=False, dataloader_num_workers=0, **GKD,
        )  # fmt: skip
        peft_cfg = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0,
                              target_modules=sorted(linear_names(student.config)), task_type="CAUSAL_LM")  # fmt: skip
        trainer = GKDTrainer(model=student, teacher_model=teacher, args=cfg, train_dataset=ds, processing_class=tok,
                             peft_config=peft_cfg, callbacks=[Timer()])  # fmt: skip
        generate, on_policy = trainer.generate_on_policy_outputs, []
        trainer.generate_on_policy_outputs = lambda *a: on_policy.append(1) or generate(*a)  # counted, else as is
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        merged = trainer.model.merge_and_unload().eval()
        peak_before_eval = peak_rss_mb()  # training's peak, before the evaluation below
    out = evaluate(merged, tok)
    return {"step_s": statistics.median(times[1:]), "peak_rss_mb": peak_before_eval, "ppl": out["ppl"],
            "task_acc": out["task_acc"], "losses": losses, "on_policy": len(on_policy)}  # fmt: skip


def worker(args) -> int:
    torch.set_num_threads(args.threads)
    out = run_efflm(args, Path(args.data)) if args.worker == "efflm" else run_trl(args, Path(args.data))
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "results" / "vs_trl_gkd.md"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    from efflm.models.sources import load_tokenizer

    res = {}
    with tempfile.TemporaryDirectory(prefix="gkd-data-") as tmp:
        data = Path(tmp) / "rows.jsonl"
        rows_file(load_tokenizer(args.model), data, args.steps * BATCH)
        for side in ("efflm", "trl"):
            cmd = [sys.executable, __file__, "--worker", side, "--data", str(data), "--model", args.model,
                   "--steps", str(args.steps), "--threads", str(args.threads)]  # fmt: skip
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
            if p.returncode or line is None:
                sys.stderr.write(p.stderr[-4000:])
                raise SystemExit(f"{side}: worker failed (exit {p.returncode})")
            res[side] = json.loads(line[7:])
            print(f"{side}: {res[side]['step_s']:.2f} s/step, {res[side]['peak_rss_mb']:.0f} MB", file=sys.stderr)
    e, t = res["efflm"], res["trl"]
    text = "\n".join([
        "# GKD: efflm against trl's GKDTrainer",
        "",
        f"`{args.model}` teacher (dense), student LLM-Pruner −20% (ratio 0.34) with LoRA r 8 on all seven "
        f"projections; {args.steps} steps of {BATCH} chat rows (built-in instruction tasks), ≤ {SEQ_LEN} tokens, "
        f"λ 0.5, β 0.5, τ 0.9, ≤ {NEW_TOKENS} new tokens per continuation, AdamW lr {LR:g}, {args.threads} threads, "
        "fp32; each side its own process. The on-policy draws are each side's own.",
        "",
        "| side | what ran | on-policy steps | step s (median) | peak RSS MB | held-out ppl | task accuracy |",
        "|---|---|---|---|---|---|---|",
        f"| efflm | `efflm finetune` gkd (chunked divergence, efflm decode) | {e['on_policy']} of {args.steps} | "
        f"{e['step_s']:.2f} | {e['peak_rss_mb']:.0f} | {e['ppl']:.3f} | {e['task_acc']:.0%} |",
        f"| trl | `GKDTrainer` + peft LoRA (full logits, HF generate) | {t['on_policy']} of {args.steps} | "
        f"{t['step_s']:.2f} | {t['peak_rss_mb']:.0f} | {t['ppl']:.3f} | {t['task_acc']:.0%} |",
        "",
        f"efflm / trl: step time {e['step_s'] / t['step_s']:.2f}×, peak RSS {e['peak_rss_mb'] / t['peak_rss_mb']:.2f}×.",
    ]) + "\n"  # fmt: skip
    Path(args.out).write_text(text)
    Path(args.out).with_suffix(".json").write_text(json.dumps({"args": vars(args), "rows": res}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
