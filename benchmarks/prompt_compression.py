"""Prompt compression on a long-context retrieval task built from real text: accuracy against the
compression ratio for Selective Context, LLMLingua and naive truncation, the TTFT each saves,
and accuracy against the fact's depth ("Lost in the Middle").

    python benchmarks/prompt_compression.py [--model smollm2-135m] [--haystacks 6] [--ratios 2,4,8]

A haystack is ``--paragraphs`` consecutive paragraphs of the evaluation plays (Shakespeare);
the needle — "The pass key is NNNNN. Remember it. NNNNN is the pass key." with a random
five-digit key — is inserted between paragraphs at depths 0, 0.25, 0.5, 0.75 and 1 (before the
first paragraph … after the last). The prompt is an instruction, the haystack (the context a
compressor may shorten) and the question "What is the pass key? The pass key is"; the model
answers greedily (8 new tokens) on efflm's decode path and is right when the first number it
writes is the key. Every compressor uses the answering model itself as its small LM and keeps
the instruction and question whole; the ratio is the whole prompt's tokens ÷ the compressed
prompt's. TTFT is the decode path's prefill + first token of the prompt as sent (median);
compression time is the compressor's own (median), so TTFT + compression is what a request
waits. The rows run one after another over the same prompts, in one process.
The ``llmlingua`` package itself is not run: its ``PromptCompressor`` downloads tiktoken's
cl100k_base encoding when constructed, and this machine has no network.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
INSTRUCTION = "There is an important piece of information hidden in the text below. Find it and memorize it."
QUESTION = "What is the pass key? The pass key is"


def haystacks(n: int, n_paragraphs: int, seed: int = 0) -> list[tuple[list[str], int]]:
    from efflm.datasets.text import paragraphs

    paras = paragraphs("eval")
    rng = random.Random(seed)
    return [(paras[s : s + n_paragraphs], rng.randrange(10_000, 100_000))
            for s in rng.sample(range(len(paras) - n_paragraphs), n)]  # fmt: skip


def prompt_parts(paras: list[str], key: int, depth: float):
    from efflm.data_methods.prompt_parts import PromptParts

    needle = f"The pass key is {key}. Remember it. {key} is the pass key."
    at = round(depth * len(paras))
    return PromptParts(INSTRUCTION, "\n\n".join(paras[:at] + [needle] + paras[at:]), QUESTION)


def answer_is(text: str, key: int) -> bool:
    m = re.search(r"\d+", text)
    return bool(m) and m.group() == str(key)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--haystacks", type=int, default=6)
    ap.add_argument("--paragraphs", type=int, default=7)
    ap.add_argument("--ratios", default="2,4,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "results" / "prompt_compression.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from efflm.core.atomic import publish
    from efflm.core.progress import progress
    from efflm.data_methods import llmlingua, selective_context, truncate_prompt
    from efflm.data_methods.context import DataContext
    from efflm.data_methods.prompt_parts import n_tokens
    from efflm.inference.engine import Engine
    from efflm.inference.generate import SamplingConfig, generate
    from efflm.io.load import load

    model, tok = load(args.model)
    ctx = DataContext(model, tok)
    engine = Engine(model)
    ratios = [float(r) for r in args.ratios.split(",")]
    rows = [("none", 1.0, None)]
    for mod, cfg in ((truncate_prompt, truncate_prompt.TruncateConfig), (selective_context,
                     selective_context.SelectiveContextConfig), (llmlingua, llmlingua.LLMLinguaConfig)):  # fmt: skip
        rows += [(cfg.method, r, (mod, cfg(ratio=r))) for r in ratios]
    prompts = [
        (prompt_parts(p, key, d), key, d) for p, key in haystacks(args.haystacks, args.paragraphs) for d in DEPTHS
    ]
    sampling = SamplingConfig(max_new_tokens=8)
    generate(model, tok, [prompts[0][0].join()], sampling, engine=engine)  # warm-up
    results = {}
    bar = progress(None, "prompt compression", total=len(rows) * len(prompts))
    for name, ratio, how in rows:
        out = []
        for parts, key, depth in prompts:
            t0 = time.perf_counter()
            text = parts.join() if how is None else how[0].apply([parts], how[1], ctx)[0]
            compress_s = time.perf_counter() - t0
            (gen,), timing = generate(model, tok, [text], sampling, engine=engine)
            out.append({"depth": depth, "ok": answer_is(gen.text, key), "ttft_s": timing.ttft_s,
                        "compress_s": compress_s, "tokens_in": n_tokens(tok, parts.join()),
                        "tokens_out": n_tokens(tok, text), "kept_needle": str(key) in text})  # fmt: skip
            bar.update(1)
        results[(name, ratio)] = out
    bar.close()
    return publish(Path(args.out), render(results, rows, args, len(prompts)))


def render(results, rows, args, n) -> str:
    base = results[("none", 1.0)]
    base_ttft = statistics.median(r["ttft_s"] for r in base)
    lines = [
        "# Prompt compression: pass-key retrieval in real text",
        "",
        f"`python benchmarks/prompt_compression.py --model {args.model} --haystacks {args.haystacks} "
        f"--paragraphs {args.paragraphs} --ratios {args.ratios}`. {n} prompts: {args.haystacks} haystacks of "
        f"{args.paragraphs} paragraphs of the evaluation plays × the needle at depths "
        f"{', '.join(f'{d:g}' for d in DEPTHS)}; the model is its own compressor's small LM; greedy answers on "
        f"efflm's decode path, {args.threads} threads. Ratio: the prompt's tokens ÷ the compressed prompt's "
        "(achieved: over all prompts). Needle kept: the key's digits still in the compressed prompt.",
        "",
        "| method | ratio | achieved | accuracy | needle kept | TTFT ms | compression ms | TTFT + compression, × uncompressed TTFT |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, ratio, _ in rows:
        rs = results[(name, ratio)]
        ttft = statistics.median(r["ttft_s"] for r in rs)
        comp = statistics.median(r["compress_s"] for r in rs)
        achieved = sum(r["tokens_in"] for r in rs) / sum(r["tokens_out"] for r in rs)
        lines.append(
            f"| {name} | {ratio:g}× | {achieved:.2f}× | {sum(r['ok'] for r in rs) / len(rs):.2f} | "
            f"{sum(r['kept_needle'] for r in rs) / len(rs):.2f} | {ttft * 1e3:.0f} | {comp * 1e3:.0f} | "
            f"{(ttft + comp) / base_ttft:.2f} |"
        )
    mid = sorted({r for _, r, _ in rows if r > 1})
    mid = mid[len(mid) // 2] if mid else 1.0
    lines += ["", f"Accuracy by the needle's depth (0: before the first paragraph, 1: after the last), "
              f"uncompressed and at {mid:g}×:", "",
              "| method | " + " | ".join(f"depth {d:g}" for d in DEPTHS) + " |", "|---|" + "---|" * len(DEPTHS)]  # fmt: skip
    for name, ratio, _ in rows:
        if ratio in (1.0, mid):
            rs = results[(name, ratio)]
            cells = [sum(r["ok"] for r in rs if r["depth"] == d) / sum(r["depth"] == d for r in rs) for d in DEPTHS]
            lines.append(f"| {name} {ratio:g}× | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
