"""Prefix caching: time to first token for streams that share a long system prompt, with the cache
on and off, and whether their outputs are the same.

    python benchmarks/serve_prefix.py [--model smollm2-135m] [--system-tokens 1000] [--streams 8]
        [--new 16] [--rounds 3] [--threads 2]

The model as ``benchmarks/serve_load.py`` serves it (RTN W4 g32, int8 embeddings, bf16); efflm's
batcher in-process on the main thread (no HTTP), chunked prefill of 128 tokens a step. A system
prompt of ``--system-tokens`` tokens of the evaluation text, then ``--streams`` different short
questions, submitted at once after one warm-up request with the same system prompt (so the
cache, when on, holds it — as a server does after its first such request); greedy, ``--new``
tokens each. TTFT: submission to first token, p50 and p90 over the streams; median over rounds,
the two modes interleaved. Writes ``results/serve_prefix.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
QUESTIONS = ["Who is speaking?", "What happens next?", "Summarise the scene.", "Name one character.",
             "Where does this take place?", "What is the mood?", "Quote one line.", "What does the king want?",
             "Is anyone lying?", "What time of day is it?", "Who enters last?", "What is promised?"]  # fmt: skip


def run(model, tok, prompts: list[list[int]], new: int, prefix_mb: float, warm: list[int]) -> tuple[list, list]:
    """(TTFTs in seconds, tokens) of ``prompts`` submitted at once, after the ``warm`` request."""
    from serve_structured import serve_at_once

    from efflm.serve.batcher import Batcher

    b = Batcher(model, tok, max_batch=len(prompts), max_len=2048, chunk=128, prefix_cache_mb=prefix_mb)
    for batch in ([warm], prompts):
        reqs = serve_at_once(b, [dict(ids=ids) for ids in batch], new)
    return [r.t_first - r.t_submit for r in reqs], [r.gen.tokens for r in reqs]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--system-tokens", type=int, default=1000)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--new", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefix-cache-mb", type=float, default=256.0)
    ap.add_argument("--out", default=str(ROOT / "results" / "serve_prefix.md"))
    args = ap.parse_args(argv)
    import torch
    from serve_load import RECIPE

    from efflm.core import recipe as recipes
    from efflm.core.atomic import publish
    from efflm.datasets.text import eval_tokens
    from efflm.pipeline import load_and_apply

    torch.set_num_threads(args.threads)
    model, tok = load_and_apply(args.model, recipes.from_yaml(RECIPE))
    system = eval_tokens(tok)[: args.system_tokens].tolist()
    ask = lambda q: system + tok("\nQuestion: " + q + "\nAnswer:", add_special_tokens=False)["input_ids"]  # noqa: E731
    prompts = [ask(q) for q in (QUESTIONS * 4)[: args.streams]]
    warm = ask("Who wrote this?")
    modes = {"prefix cache off": 0.0, "prefix cache on": args.prefix_cache_mb}
    ttft: dict[str, list] = {m: [] for m in modes}
    outputs: dict[str, list] = {}
    run(model, tok, prompts[:2], 2, 0.0, warm)  # warm-up
    for _ in range(args.rounds):
        for mode, mb in modes.items():
            times, tokens = run(model, tok, prompts, args.new, mb, warm)
            ttft[mode].append(sorted(times))
            outputs.setdefault(mode, tokens)
    same = outputs["prefix cache on"] == outputs["prefix cache off"]
    rows = {m: (statistics.median(statistics.median(t) for t in ts),
                statistics.median(t[max(0, math.ceil(0.9 * len(t)) - 1)] for t in ts)) for m, ts in ttft.items()}  # fmt: skip
    print(json.dumps({"rows": rows, "same_outputs": same}, indent=1), file=sys.stderr)
    return publish(Path(args.out), table(args, rows, same, len(prompts[0])))


def table(args, rows: dict, same: bool, prompt_len: int) -> str:
    import platform

    import torch

    cmd = "python benchmarks/serve_prefix.py" + "".join(f" {a}" for a in map(shlex.quote, sys.argv[1:]))
    off = rows["prefix cache off"][0]
    lines = [
        "# Prefix caching: time to first token with a shared system prompt",
        "",
        f"Regenerate: `{cmd}`. Machine: {torch.get_num_threads()} threads, {platform.machine()}. Model: {args.model} "
        f"as the load test serves it (RTN W4 g32, int8 embeddings, bf16). {args.streams} streams at once, each a "
        f"{args.system_tokens}-token system prompt (evaluation text) plus its own short question ({prompt_len} tokens "
        f"in all), after one warm-up request with the same system prompt; greedy, {args.new} tokens each; efflm's "
        f"batcher in-process, 128-token prefill chunks, prefix cache {args.prefix_cache_mb:g} MB in blocks of 32 "
        f"tokens; median of {args.rounds} interleaved rounds.",
        "",
        "| mode | TTFT p50 s | TTFT p90 s | cache-off p50 / this p50 |",
        "|---|---|---|---|",
    ]
    for mode, (p50, p90) in rows.items():
        lines.append(f"| {mode} | {p50:.3f} | {p90:.3f} | {off / p50:.1f}× |")
    lines += ["", f"Outputs with the cache on equal those with it off: {'yes' if same else 'NO'}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
