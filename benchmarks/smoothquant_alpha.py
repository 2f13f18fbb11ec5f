"""SmoothQuant's migration strength α, chosen on the development split (never the evaluation split).

    python benchmarks/smoothquant_alpha.py [--model SPEC] [--alphas 0.3,0.4,0.5,0.6,0.7,0.8]

For each α: SmoothQuant W8A8 with the default calibration (8 x 512 tokens), then perplexity
over ``--windows`` x 512 tokens of the development split — the last tokens of the
calibration text, which calibration windows never touch. The α with the lowest development
perplexity is the one ``SmoothQuantConfig`` defaults to; the evaluation split is scored
only afterwards, for that α and the dense model, to report it. Writes ``--out`` (default
``results/smoothquant_alpha.md``).
"""

from __future__ import annotations

import argparse

import torch

from efflm.core.atomic import publish
from efflm.methods import config_from_dict as c


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/smoothquant_alpha.py")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--alphas", default="0.3,0.4,0.5,0.6,0.7,0.8")
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="results/smoothquant_alpha.md")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from efflm.datasets import text
    from efflm.eval.metrics import perplexity
    from efflm.pipeline import load_and_apply

    dense, tok = load_and_apply(a.model, [c({"method": "dense"})])
    dev = text.dev_tokens(tok, a.seq_len * a.windows)
    evaluation = text.eval_tokens(tok, a.seq_len * a.windows)
    base_dev = perplexity(dense, dev, a.seq_len, a.windows)["ppl"]
    dev_ppl, models = {}, {}
    for alpha in (float(x) for x in a.alphas.split(",") if x.strip()):
        models[alpha], _ = load_and_apply(a.model, [c({"method": "smoothquant", "alpha": alpha})])
        dev_ppl[alpha] = perplexity(models[alpha], dev, a.seq_len, a.windows)["ppl"]
        print(f"alpha {alpha}: dev ppl {dev_ppl[alpha]:.3f}", flush=True)
    best = min(dev_ppl, key=dev_ppl.get)
    base_eval = perplexity(dense, evaluation, a.seq_len, a.windows)["ppl"]
    best_eval = perplexity(models[best], evaluation, a.seq_len, a.windows)["ppl"]
    rows = [
        f"| {al:.2f} | {ppl:.3f} | {(ppl / base_dev - 1) * 100:+.2f}% |{' chosen' if al == best else ''}"
        for al, ppl in dev_ppl.items()
    ]
    md = "\n".join(
        [
            f"# SmoothQuant α on the development split — {a.model}",
            "",
            f"Development split: {a.windows} x {a.seq_len} tokens from the end of the calibration text (never drawn "
            f"as calibration windows); dense development perplexity {base_dev:.3f}.",
            "",
            "| α | dev ppl | vs dense | |",
            "|---|---|---|---|",
            *rows,
            "",
            f"Chosen α = {best:.2f} (lowest development perplexity). Evaluation split, scored once afterwards: dense "
            f"{base_eval:.3f}, SmoothQuant α={best:.2f} {best_eval:.3f} ({(best_eval / base_eval - 1) * 100:+.2f}%).",
            "",
            f"Command: `python benchmarks/smoothquant_alpha.py --model {a.model} --alphas {a.alphas} "
            f"--windows {a.windows}`.",
        ]
    )
    return publish(a.out, md)


if __name__ == "__main__":
    raise SystemExit(main())
