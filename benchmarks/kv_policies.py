"""KV-cache methods side by side on the default model, measured in one run.

    python benchmarks/kv_policies.py [--len 1024] [--long 2048] [--window 256] [--dtype bfloat16]

Part 1: the first ``--len`` evaluation tokens are scored as one sequence, token by token,
through each cache policy (full, int8, H2O and StreamingLLM at 50% and 20% of the sequence,
and a plain sliding window without sinks at the same budgets): perplexity, cache bytes,
and the scoring speed (tok/s of single-token steps). Part 2: ``--long`` tokens through a
cache of ``--window`` slots — text longer than the cache — StreamingLLM (4 sinks) against
the sliding window without sinks, with perplexity per quarter of the text. Writes
``--out`` (default ``results/kv_policies.md``).
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import torch

from efflm.core.atomic import publish
from efflm.core.progress import progress
from efflm.inference.engine import Engine
from efflm.methods import config_from_dict, get


def score(model: torch.nn.Module, ids: torch.Tensor, prefill: int) -> tuple[torch.Tensor, float, int]:
    """Per-token NLL of ``ids [T]`` through the model's cache; (nll [T−1], tok/s of the 1-token steps, cache bytes)."""
    e = Engine(model)
    cache = e.start(1, ids.numel())
    first = min(prefill, cache.size) if cache.evicts else prefill
    logits = [e.feed(ids[None, :first], all_logits=True)[0]]
    t0 = time.perf_counter()
    for t in progress(range(first, ids.numel()), desc="score", total=ids.numel() - first):
        logits.append(e.feed(ids[None, t : t + 1])[0])
    rate = (ids.numel() - first) / (time.perf_counter() - t0)
    logits = torch.cat(logits)[:-1]
    nll = torch.nn.functional.cross_entropy(logits, ids[1:], reduction="none")
    return nll, rate, cache.nbytes()


def with_policy(model: torch.nn.Module, step: dict | None) -> torch.nn.Module:
    m = copy.copy(model)
    m.config = copy.deepcopy(model.config)
    if step:
        cfg = config_from_dict(step)
        get(cfg.method).apply(m, cfg, None)
    return m


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/kv_policies.py")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--len", type=int, default=1024)
    p.add_argument("--long", type=int, default=2048)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--prefill", type=int, default=64, help="tokens fed in one chunk before single steps")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="results/kv_policies.md")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from efflm.datasets import text
    from efflm.pipeline import load_and_apply

    model, tok = load_and_apply(a.model, [config_from_dict({"method": "dense", "dtype": a.dtype})])
    ids = text.eval_tokens(tok, max(a.len, a.long))
    rows = []
    policies: list[tuple[str, dict | None]] = [("full cache", None), ("int8 KV", {"method": "kv_int8"})]
    for frac in (0.5, 0.2):
        budget = math.ceil(frac * a.len)
        policies += [
            (f"H2O {frac:.0%}", {"method": "h2o", "budget": frac}),
            (f"StreamingLLM {frac:.0%} (4 sinks)", {"method": "streaming_llm", "budget": budget, "sinks": 4}),
            (f"sliding window {frac:.0%} (no sinks)", {"method": "streaming_llm", "budget": budget, "sinks": 0}),
        ]
    base = None
    for name, step in policies:
        nll, rate, nbytes = score(with_policy(model, step), ids[: a.len], a.prefill)
        ppl = math.exp(nll.mean().item())
        base = base or ppl
        rows.append(f"| {name} | {ppl:.2f} | {ppl / base:.3f} | {nbytes / 1e6:.2f} | {rate:.1f} |")
        print(rows[-1], flush=True)
    long_rows = []
    quarters = a.long // 4
    for name, step in (
        ("full cache", None),
        (f"StreamingLLM {a.window} slots (4 sinks)", {"method": "streaming_llm", "budget": a.window, "sinks": 4}),
        (f"sliding window {a.window} slots (no sinks)", {"method": "streaming_llm", "budget": a.window, "sinks": 0}),
    ):
        nll, _, nbytes = score(with_policy(model, step), ids[: a.long], a.prefill)
        parts = [math.exp(nll[i * quarters : (i + 1) * quarters].mean().item()) for i in range(4)]
        long_rows.append(
            f"| {name} | {math.exp(nll.mean().item()):.2f} | "
            + " | ".join(f"{x:.2f}" for x in parts)
            + f" | {nbytes / 1e6:.2f} |"
        )
        print(long_rows[-1], flush=True)
    md = "\n".join(
        [
            f"# KV-cache methods — {a.model}, {a.dtype}, {a.threads} threads",
            "",
            f"Part 1: the first {a.len} tokens of the Shakespeare evaluation split scored as one sequence, token by token "
            f"(after a {a.prefill}-token first chunk), through each cache. Budgets are fractions of the {a.len} tokens.",
            "",
            "| cache | ppl | × full | cache MB | scoring tok/s |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"Part 2: {a.long} tokens through a cache of {a.window} slots (text longer than the cache); "
            "perplexity overall and per quarter of the text.",
            "",
            "| cache | ppl | Q1 | Q2 | Q3 | Q4 | cache MB |",
            "|---|---|---|---|---|---|---|",
            *long_rows,
            "",
            f"Command: `python benchmarks/kv_policies.py --model {a.model} --len {a.len} --long {a.long} --window {a.window} --dtype {a.dtype}`.",
        ]
    )
    return publish(a.out, md)


if __name__ == "__main__":
    raise SystemExit(main())
