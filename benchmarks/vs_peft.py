"""efflm's fine-tuning against peft, side by side: same base, data, adapter init, steps, batch,
sequence length, schedule, optimizer and threads.

    python benchmarks/vs_peft.py [--model smollm2-135m] [--steps 12] [--methods lora,dora,ia3,prompt_tuning,qlora]

For each method, efflm builds the adapter at its initial values and saves it in peft's format;
both sides start from that same file (peft through ``PeftModel.from_pretrained(...,
is_trainable=True)``), so their loss curves are comparable step by step. Each side trains in its
own subprocess (peak RSS is that process's own, model load included on both sides) on the
same batches (``efflm.trainer.Data.batch_at``), with AdamW and the same warm-up + cosine
schedule and gradient clipping.

* efflm: ``efflm.finetune.train.train`` — chunked cross-entropy through the head (512 tokens
  per chunk, recomputed in the backward pass);
* peft: a plain PyTorch loop over ``PeftModel`` with transformers' loss (``labels=``, full logits).

QLoRA: efflm trains over its NF4 base (``NF4Linear``); bitsandbytes' NF4 does not run on this
CPU, so peft trains over the same NF4 weights dequantized into plain Linears (same numbers,
fp32 storage). Step time is the median over the steps after the first; the order of the two
sides alternates from one method to the next.
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

import torch

ROOT = Path(__file__).resolve().parents[1]
METHODS = {
    "lora": {"method": "lora", "r": 8, "alpha": 16},
    "dora": {"method": "dora", "r": 8, "alpha": 16},
    "ia3": {"method": "ia3"},
    "prompt_tuning": {"method": "prompt_tuning", "n_virtual": 20},
    "qlora": {"method": "qlora", "r": 8, "alpha": 16},
}
LR = {"ia3": 3e-3, "prompt_tuning": 3e-3}  # the papers' higher rates for vector / prompt methods


def train_config(args, method: str):
    from efflm.finetune.train import TrainConfig

    return TrainConfig(
        steps=args.steps,
        lr=LR.get(method, 2e-4) * args.lr_scale,
        warmup=max(1, args.steps // 10),
        batch=args.batch,
        seq_len=args.seq_len,
        checkpoint_every=10**6,
    )


def heldout_ppl(model, tok, seq_len: int = 512, windows: int = 2) -> float:
    """Perplexity on the evaluation split; the last len(window) logits (peft's prompt tuning returns
    the virtual tokens' too)."""
    from efflm.datasets.text import eval_tokens

    ids = eval_tokens(tok, seq_len * windows)
    nll, n = 0.0, 0
    with torch.inference_mode():
        for i in range(windows):
            w = ids[i * seq_len : (i + 1) * seq_len].unsqueeze(0)
            logits = model(input_ids=w).logits[0, -seq_len:-1].float()
            nll += torch.nn.functional.cross_entropy(logits, w[0, 1:], reduction="sum").item()
            n += seq_len - 1
    return float(torch.tensor(nll / n).exp())


def worker(args) -> int:
    from efflm import trainer
    from efflm.finetune.hooks import hooks_for
    from efflm.finetune.peft_files import load_adapter
    from efflm.finetune.train import lr_factor, train
    from efflm.io.load import load
    from efflm.methods import config_from_dict

    torch.set_num_threads(args.threads)
    cfg = train_config(args, args.method)
    model, tok = load(args.model)
    data = trainer.load_data("domain", tok, cfg)
    if args.worker == "efflm":
        model, _ = load_adapter(model, args.init, trainable=True)
        state = train(model, cfg, data.batch_at, hooks=hooks_for(config_from_dict(METHODS[args.method])))
        losses, times = state.losses, state.step_seconds
        evaluated = model
    else:
        import peft

        if args.method == "qlora":
            from efflm.finetune.adapter import merge
            from efflm.methods import config_from_dict, get

            # zero-initialised B: merging leaves exactly the NF4 weights, dequantized into fp32 Linears
            model = merge(get("qlora").apply(model, config_from_dict(METHODS["qlora"]), None))
        if args.method == "prompt_tuning":  # peft loads prompt learning adapters frozen only: build, then load
            from safetensors.torch import load_file

            n = METHODS["prompt_tuning"]["n_virtual"]
            pm = peft.get_peft_model(model, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n))
            peft.set_peft_model_state_dict(pm, load_file(str(Path(args.init) / "adapter_model.safetensors")))
        else:
            pm = peft.PeftModel.from_pretrained(model, args.init, is_trainable=True)
        pm.train()
        params = [p for p in pm.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
        losses, times = [], []
        for step in range(cfg.steps):
            torch.manual_seed(cfg.seed * 1_000_003 + step)
            t0 = time.perf_counter()
            b = data.batch_at(step, 0, 1)
            loss = pm(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
            losses.append(float(loss.detach()))
        pm.eval()
        evaluated = pm
    out = {
        "losses": losses,
        "step_s": statistics.median(times[1:] or times),
        "tok_s": args.batch * args.seq_len / statistics.median(times[1:] or times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "ppl": heldout_ppl(evaluated, tok, windows=args.eval_windows),
        "trainable": sum(p.numel() for p in evaluated.parameters() if p.requires_grad),
    }
    Path(args.json).write_text(json.dumps(out))
    return 0


def make_init(model_spec: str, method: str, out: Path) -> None:
    from efflm.finetune.peft_files import save_adapter
    from efflm.io.load import load
    from efflm.methods import config_from_dict, get

    model, _ = load(model_spec)
    cfg = config_from_dict(METHODS[method])
    save_adapter(get(method).apply(model, cfg, None), cfg, out, {})


def run_side(args, side: str, method: str, init: Path, tmp: Path) -> dict:
    out = tmp / f"{method}-{side}.json"
    cmd = [sys.executable, __file__, "--worker", side, "--method", method, "--init", str(init), "--json", str(out)]
    for k in ("model", "steps", "batch", "seq_len", "threads", "lr_scale", "eval_windows"):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return json.loads(out.read_text())


def table(rows: list[tuple[str, dict, dict]], args) -> str:
    head = (
        f"Model `{args.model}`, fp32, {args.steps} AdamW steps of {args.batch} × {args.seq_len} tokens (calibration "
        f"split, same batches), warm-up + cosine, clipping 1.0, {args.threads} threads, adapters starting from the "
        "same file. Step time: median over steps 2..N; peak RSS: the training process's own (model load included); "
        "final loss: mean of the last 3 steps; held-out: perplexity on "
        f"{args.eval_windows} × 512 tokens of the evaluation split. One run per side, sides alternating in order.\n\n"
        "| method | side | trainable | step s | tok/s | peak RSS MB | final loss | held-out ppl | step time × peft | RSS × peft |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for method, ours, theirs in rows:
        for side, r in (("efflm", ours), ("peft", theirs)):
            final = sum(r["losses"][-3:]) / len(r["losses"][-3:])
            ratio = (
                f"{ours['step_s'] / theirs['step_s']:.2f}× | {ours['peak_rss_mb'] / theirs['peak_rss_mb']:.2f}×"
                if side == "efflm"
                else "1.00× | 1.00×"
            )
            lines.append(
                f"| {method} | {side} | {r['trainable']:,} | {r['step_s']:.2f} | {r['tok_s']:.0f} | "
                f"{r['peak_rss_mb']:.0f} | {final:.4f} | {r['ppl']:.3f} | {ratio} |"
            )
    notes = (
        "\n\nQLoRA: efflm over its NF4 base; peft over the same NF4 weights dequantized into fp32 Linears "
        "(bitsandbytes' NF4 does not run on this CPU). Targets: step time ≤ 1.0× and peak RSS ≤ 1.0× peft's "
        "at equal final loss.\n"
    )
    return head + "\n".join(lines) + notes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr-scale", type=float, default=1.0)
    p.add_argument("--eval-windows", type=int, default=2)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--out", default=str(ROOT / "results" / "vs_peft.md"))
    p.add_argument("--worker", choices=["efflm", "peft"], help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--init", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    rows = []
    with tempfile.TemporaryDirectory(prefix="efflm-vs-peft-") as tmp:
        tmp = Path(tmp)
        for i, method in enumerate(m for m in args.methods.split(",") if m):
            init = tmp / f"{method}-init"
            make_init(args.model, method, init)
            order = ("efflm", "peft") if i % 2 == 0 else ("peft", "efflm")
            got = {side: run_side(args, side, method, init, tmp) for side in order}
            rows.append((method, got["efflm"], got["peft"]))
            print(f"{method}: efflm {got['efflm']['step_s']:.2f} s/step, peft {got['peft']['step_s']:.2f} s/step")
    md = table(rows, args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
