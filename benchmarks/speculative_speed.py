"""Speculative decoding's speedup on the default model, measured in one run.

    python benchmarks/speculative_speed.py [--model SPEC] [--dtype bfloat16|float32] [--new-tokens 128] [--rounds 2]

Target: the default model in ``--dtype``, greedy, batch 1, on efflm's decode path. Two workloads:
``rewrite`` (the chat model is asked to repeat a passage: the output copies the prompt, where
prompt lookup shines) and ``open`` (a story: nothing to copy). Drafters: none (plain
decoding), prompt lookup (k = 4 and 8 fixed; adaptive up to 8 on n-gram matches of 2 or more,
the default), the target's first ``--draft-layers`` layers, and a compressed copy of the target
(RTN 4-bit g32 + int8 embeddings), fixed and adaptive. The target runs on the fused decode
step where it applies (``Engine.fast``), which verifies k + 1 tokens in one call. Both paths do the same
work: exactly ``--new-tokens`` tokens as ids (no end-of-sequence stop, no detokenizing), one
untimed warm-up of every path first, then interleaved rounds; the token counts are asserted
equal. Every speculative output is checked token for token against plain decoding (on the
fused step a (k+1)-token verification computes each token exactly as a one-token step does;
on the reference path bf16 rounds differently, so a long greedy run could part at a near-tie). Prints wall time for the whole generation (prefill included),
tok/s, speedup over plain and the acceptance rate; writes ``--out`` (default
``results/speculative_speed_<dtype>.md``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from efflm.core.atomic import publish
from efflm.methods import config_from_dict as c

PASSAGE = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, "
    "it was the season of Darkness, it was the spring of hope, it was the winter of despair."
)
WORKLOADS = {
    "rewrite": f"Repeat the following passage exactly, word for word:\n\n{PASSAGE}",
    "open": "Write a short story about a lighthouse keeper who finds a message in a bottle.",
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/speculative_speed.py")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--draft-layers", type=int, default=8)
    p.add_argument("--out")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from efflm.inference.generate import SamplingConfig, encode, generate_ids
    from efflm.inference.speculative import first_layers, speculative_ids
    from efflm.pipeline import load_and_apply

    bf16 = c({"method": "dense", "dtype": "bfloat16"})
    target, tok = load_and_apply(a.model, [c({"method": "dense", "dtype": a.dtype})])
    small, _ = load_and_apply(
        a.model, [c({"method": "rtn", "bits": 4, "group_size": 32}), c({"method": "int8_embeddings"}), bf16]
    )
    layers = min(a.draft_layers, target.config.num_hidden_layers - 1)
    fixed = {"adaptive": False, "min_ngram": 1}
    drafters = {  # (draft model or None for prompt lookup, speculative_ids options)
        "prompt lookup k=4 fixed": (None, {"k": 4, **fixed}),
        "prompt lookup k=8 fixed": (None, {"k": 8, **fixed}),
        "prompt lookup adaptive k≤8, n-gram≥2 (the default)": (None, {"k": 8, "adaptive": True, "min_ngram": 2}),
        f"first {layers} layers k=4 fixed": (first_layers(target, layers), {"k": 4, **fixed}),
        "RTN-4bit copy k=4 fixed": (small, {"k": 4, **fixed}),
        "RTN-4bit copy adaptive k≤8": (small, {"k": 8, "adaptive": True}),
    }
    cfg = SamplingConfig(max_new_tokens=a.new_tokens)
    lines = []
    for wname, prompt in WORKLOADS.items():
        ids, valid = encode(tok, [prompt], chat=True)

        def plain_run():
            return generate_ids(target, None, ids, valid, cfg)[0][0].tokens  # ids only, no eos: as speculative

        def spec_run(draft, opts):
            return speculative_ids(target, ids[0].tolist(), cfg, draft=draft, eos=None, **opts)

        plain_run()  # warm-up of every path before any timed round
        for draft, opts in drafters.values():
            spec_run(draft, opts)
        times: dict[str, list[float]] = {k: [] for k in ["plain", *drafters]}
        stats, outputs = {}, {}
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            ref = plain_run()
            times["plain"].append(time.perf_counter() - t0)
            for name, (draft, opts) in drafters.items():
                t0 = time.perf_counter()
                got, _, st = spec_run(draft, opts)
                times[name].append(time.perf_counter() - t0)
                if len(got) != len(ref):
                    raise SystemExit(f"{name}: {len(got)} tokens against plain's {len(ref)}: not the same work")
                stats[name], outputs[name] = st, got == ref
        n = len(ref)
        plain = statistics.median(times["plain"])
        lines.append(f"| {wname} | plain decoding | {n} | {plain:.2f} | {n / plain:.1f} | 1.00× | – | – |")
        for name in drafters:
            t = statistics.median(times[name])
            st = stats[name]
            lines.append(
                f"| {wname} | {name} | {n} | {t:.2f} | {n / t:.1f} | {plain / t:.2f}× | "
                f"{st.acceptance:.0%} ({st.accepted}/{st.proposed}), {st.target_steps} target steps | "
                f"{'yes' if outputs[name] else 'NO'} |"
            )
        print("\n".join(lines[-len(drafters) - 1 :]), flush=True)
    md = "\n".join(
        [
            f"# Speculative decoding — {a.model} {a.dtype} target, greedy, batch 1, {a.threads} threads",
            "",
            f"Exactly {a.new_tokens} new tokens (ids, no end-of-sequence stop, no detokenizing on either path) after "
            f"the chat-formatted prompt; wall time of the whole generation (prefill included); one untimed warm-up "
            f"of every path, then the median of {a.rounds} interleaved rounds.",
            "",
            "| workload | drafter | tokens | seconds | tok/s | speedup | accepted | identical to plain |",
            "|---|---|---|---|---|---|---|---|",
            *lines,
            "",
            f"Command: `python benchmarks/speculative_speed.py --model {a.model} --dtype {a.dtype} "
            f"--new-tokens {a.new_tokens} --rounds {a.rounds}`.",
        ]
    )
    return publish(a.out or f"results/speculative_speed_{a.dtype}.md", md)


if __name__ == "__main__":
    raise SystemExit(main())
