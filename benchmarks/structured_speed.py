"""Structured pruning's speedup, measured in one run: dense vs LLM-Pruner-style pruned models.

    python benchmarks/structured_speed.py [--ratios 0.34,0.59] [--dtype float32] [--rounds 3]

Builds the pruned models once (8 x 512 calibration tokens, Taylor importance), then times
greedy decoding (32 new tokens after a 128-token prompt, batch 1) and prefill for every
model in interleaved rounds — dense, pruned, pruned, dense, ... — so a slow moment of a
shared machine hits all of them alike. Prints parameters, bytes, perplexity, tok/s (median
over rounds) and the ratios to dense; writes ``--out`` (default
``results/structured_speed.md``).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from efflm.core.atomic import publish
from efflm.eval import metrics
from efflm.methods import config_from_dict
from efflm.pipeline import load_and_apply


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/structured_speed.py")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--ratios", default="0.34,0.59")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="results/structured_speed.md")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from efflm.datasets import text

    cast = {"method": "dense", "dtype": a.dtype}
    recipes = {"dense": [cast]}
    for r in (float(x) for x in a.ratios.split(",") if x.strip()):
        recipes[f"llm_pruner ratio {r}"] = [{"method": "llm_pruner", "ratio": r}, cast]
    models, tok = {}, None
    for name, steps in recipes.items():
        models[name], tok = load_and_apply(a.model, [config_from_dict(s) for s in steps])
    ids = text.eval_tokens(tok, 2048)
    info = {
        n: {
            "params": sum(p.numel() for p in m.parameters()),
            "bytes": metrics.model_bytes(m),
            "ppl": metrics.perplexity(m, ids)["ppl"],
        }
        for n, m in models.items()
    }
    tok_s: dict[str, list[float]] = {n: [] for n in models}
    ttft: dict[str, list[float]] = {n: [] for n in models}
    for i in range(a.rounds):
        order = list(models) if i % 2 == 0 else list(reversed(models))
        for n in order:
            s = metrics.speed(models[n], ids[:128], new_tokens=32, reps=1)
            tok_s[n].append(s["tok_s"])
            ttft[n].append(s["ttft_ms"])
    base = statistics.median(tok_s["dense"])
    base_ttft = statistics.median(ttft["dense"])
    lines = [
        f"Structured pruning vs dense on {a.model}, {a.dtype}, {a.threads} threads: decode tok/s at batch 1 "
        f"(32 tokens after a 128-token prompt), median of {a.rounds} interleaved rounds; perplexity over 4 x 512 "
        "tokens.",
        "",
        "| model | params (M) | params removed | MB | ppl | tok/s | speedup | TTFT ms | TTFT ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n in models:
        t, f = statistics.median(tok_s[n]), statistics.median(ttft[n])
        removed = 1 - info[n]["params"] / info["dense"]["params"]
        lines.append(
            f"| {n} | {info[n]['params'] / 1e6:.1f} | {removed:.1%} | {info[n]['bytes'] / 1e6:.1f} | "
            f"{info[n]['ppl']:.2f} | {t:.1f} | {t / base:.2f}x | {f:.0f} | {f / base_ttft:.2f}x |"
        )
    table = "\n".join(lines)
    return publish(a.out, table)


if __name__ == "__main__":
    raise SystemExit(main())
