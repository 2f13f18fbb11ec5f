"""Decode speed side by side in one run: efflm's decode path vs llama.cpp vs transformers.

    python benchmarks/vs_llamacpp.py [--model SPEC] [--prompt-len 128] [--new-tokens 64] [--rounds 3]

Same model (default: the default model), same prompt, same number of new tokens, greedy, batch 1, the same
threads, in interleaved rounds (every engine once per round, so a slow moment of a shared
machine hits all alike); median over rounds. Rows:

* efflm packed 4-bit: RTN 4-bit g32 (symmetric) + int8 embedding/lm_head, bf16 activations,
  through efflm's own q4/q8 CPU kernels (torch's int4/int8 kernels where those cannot run), on efflm's
  static-KV-cache decode path with its fused C decode step (``inference/fast_decode.py``), and the same
  model on the reference path (``Engine(model, fast=False)``: one torch op at a time, as before the fused step);
* efflm packed 8-bit: RTN 8-bit per channel + int8 embedding/lm_head, bf16, the same path;
* llama.cpp (llama-cpp-python) on efflm's own Q4_0 export of exactly those 4-bit codes, and
  on the GGUF file the model was loaded from (the default model ships as Q4_1); a model with
  no GGUF source (``tiny-llama``: no tokenizer metadata to export) has no llama.cpp rows;
* efflm bf16 and fp32 on the decode path; transformers ``generate`` in bf16 and fp32.

Prints decode tok/s, TTFT, ratios to llama.cpp Q4_0 and to transformers bf16, and the
share of the bandwidth ceiling (measured read bandwidth / bytes read per token); then
efflm's batched decode (aggregate tok/s at batch 1/2/4/8, the same prompt in every row), the
split of one 4-bit token's time (fused layers / lm_head / the rest) and a torch-profiler
summary of what remains outside the fused step; writes ``--out`` (default
``results/vs_llamacpp.md``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from efflm.core.atomic import publish
from efflm.methods import config_from_dict as c

ANCHOR = "llama.cpp, efflm's Q4_0 export of the same codes"


def efflm_run(model, ids: torch.Tensor, new: int, fast: bool = True) -> tuple[float, float]:
    """(TTFT s, aggregate decode tok/s over all rows of ``ids``); ``fast=False``: the reference path."""
    from efflm.inference.engine import Engine
    from efflm.inference.generate import SamplingConfig, generate_ids

    valid = torch.ones_like(ids, dtype=torch.bool)
    _, t = generate_ids(model, None, ids, valid, SamplingConfig(max_new_tokens=new), engine=Engine(model, fast=fast))
    return t.ttft_s, t.tok_s * ids.shape[0]


def efflm_reference_run(model, ids: torch.Tensor, new: int) -> tuple[float, float]:
    return efflm_run(model, ids, new, fast=False)


def hf_run(model, ids: torch.Tensor, new: int) -> tuple[float, float]:
    from efflm.eval.metrics import hf_greedy_timing

    prefill, decode = hf_greedy_timing(model, ids, new)
    return prefill, (new - 1) / decode


def llama_run(llm, ids: torch.Tensor, new: int) -> tuple[float, float]:
    llm.reset()
    t0 = time.perf_counter()
    ttft, n = 0.0, 0
    for _ in llm.generate(ids[0].tolist(), top_k=1, temp=0.0, reset=True):
        n += 1
        if n == 1:
            ttft, t1 = time.perf_counter() - t0, time.perf_counter()
        if n == new:
            break
    return ttft, (n - 1) / (time.perf_counter() - t1)


def profile_summary(model, ids: torch.Tensor, steps: int = 16, rows: int = 8) -> list[str]:
    from torch.profiler import profile

    with profile() as prof:
        efflm_run(model, ids, steps)
    ev = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ev)
    out = ["| op | share of CPU time | calls per token | µs per call |", "|---|---|---|---|"]
    for e in ev[:rows]:
        out.append(
            f"| `{e.key}` | {e.self_cpu_time_total / total:.0%} | {e.count / steps:.0f} | "
            f"{e.self_cpu_time_total / max(1, e.count):.0f} |"
        )
    return out


def time_split(model, ids: torch.Tensor, steps: int = 32) -> tuple[float, float, float]:
    """(ms per decoded token, ms of it in the fused decoder layers, ms in the lm_head): timed
    directly, as the C calls are invisible to torch's profiler."""
    from efflm.inference import fast_decode
    from efflm.inference.engine import Engine

    spent = {"layers": 0.0, "head": 0.0}
    real_run = fast_decode.FastDecode.run

    def timed_run(self, *args):
        t = time.perf_counter()
        y = real_run(self, *args)
        spent["layers"] += time.perf_counter() - t
        return y

    e = Engine(model)
    assert e.fast is not None, e.fast_off
    started = []
    pre = e.head.register_forward_pre_hook(lambda *a: started.append(time.perf_counter()))
    post = e.head.register_forward_hook(
        lambda *a: spent.__setitem__("head", spent["head"] + time.perf_counter() - started[-1])
    )
    fast_decode.FastDecode.run = timed_run
    try:
        e.start(1, ids.shape[1] + steps + 1)
        nxt = e.feed(ids).argmax(-1)
        spent.update(layers=0.0, head=0.0)
        t0 = time.perf_counter()
        for _ in range(steps):
            nxt = e.feed(nxt).argmax(-1)
        total = time.perf_counter() - t0
    finally:
        fast_decode.FastDecode.run = real_run
        pre.remove()
        post.remove()
    return total / steps * 1000, spent["layers"] / steps * 1000, spent["head"] / steps * 1000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/vs_llamacpp.py")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", default="1,2,4,8", help="batch sizes of the batched-decode table")
    p.add_argument("--out", default="results/vs_llamacpp.md")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from efflm.datasets import text
    from efflm.eval.metrics import bandwidth_gbs, bytes_read_per_token
    from efflm.io import gguf_export
    from efflm.methods import get
    from efflm.models.sources import gguf_source
    from efflm.pipeline import load_and_apply

    bf16, fp32 = c({"method": "dense", "dtype": "bfloat16"}), c({"method": "dense", "dtype": "float32"})
    w4, tok = load_and_apply(a.model, [c({"method": "rtn", "bits": 4, "group_size": 32})])
    source = gguf_source(a.model)
    tmp = tempfile.TemporaryDirectory(prefix="efflm-q4_0-")
    q4_0 = gguf_export.export(w4, source, Path(tmp.name) / "w4.gguf") if source is not None else None
    for step in (c({"method": "int8_embeddings"}), bf16):
        w4 = get(step.method).apply(w4, step, None)
    w8, _ = load_and_apply(
        a.model, [c({"method": "rtn", "bits": 8, "group_size": -1}), c({"method": "int8_embeddings"}), bf16]
    )
    m_bf16, _ = load_and_apply(a.model, [bf16])
    m_fp32, _ = load_and_apply(a.model, [fp32])
    ids = text.eval_tokens(tok, a.prompt_len).reshape(1, -1)
    W4 = "efflm packed 4-bit (W4 g32 + int8 lm_head, bf16)"
    engines = {
        W4: (efflm_run, w4, bytes_read_per_token(w4)),
        "efflm packed 4-bit, reference path (no fused step)": (efflm_reference_run, w4, bytes_read_per_token(w4)),
    }
    if source is not None:
        from llama_cpp import Llama

        def llama(path):
            return Llama(
                model_path=str(path),
                n_ctx=a.prompt_len + a.new_tokens + 8,
                n_threads=a.threads,
                n_threads_batch=a.threads,
                verbose=False,
            )

        engines[ANCHOR] = (llama_run, llama(q4_0), q4_0.stat().st_size)
        engines[f"llama.cpp, the model's own file ({source.name})"] = (llama_run, llama(source), source.stat().st_size)
    engines |= {
        "efflm packed 8-bit (W8 per channel + int8 lm_head, bf16)": (efflm_run, w8, bytes_read_per_token(w8)),
        "efflm bf16": (efflm_run, m_bf16, bytes_read_per_token(m_bf16)),
        "efflm fp32": (efflm_run, m_fp32, bytes_read_per_token(m_fp32)),
        "transformers generate bf16": (hf_run, m_bf16, bytes_read_per_token(m_bf16)),
        "transformers generate fp32": (hf_run, m_fp32, bytes_read_per_token(m_fp32)),
    }
    for fn, m, _ in engines.values():  # warm-up
        fn(m, ids, 4)
    res: dict[str, list[tuple[float, float]]] = {k: [] for k in engines}
    for r in range(a.rounds):
        for name, (fn, m, _) in engines.items():
            res[name].append(fn(m, ids, a.new_tokens))
            print(f"round {r + 1}: {name}: {res[name][-1][1]:.1f} tok/s", flush=True)
    bw = bandwidth_gbs()
    tok_s = {k: statistics.median(x for _, x in v) for k, v in res.items()}
    anchor, hf = tok_s.get(ANCHOR), tok_s["transformers generate bf16"]
    rows = []
    for name, (_, _, nbytes) in engines.items():
        ceiling = bw * 1e9 / nbytes
        ttft = statistics.median(t for t, _ in res[name]) * 1000
        vs_anchor = f"{tok_s[name] / anchor:.2f}×" if anchor else "– (no GGUF source)"
        rows.append(
            f"| {name} | {tok_s[name]:.1f} | {ttft:.0f} | {vs_anchor} | {tok_s[name] / hf:.2f}× | "
            f"{nbytes / 1e6:.1f} | {tok_s[name] / ceiling:.0%} |"
        )
    batches = [int(b) for b in a.batches.split(",")]
    batched = {k: engines[k] for k in engines if k.startswith("efflm")}
    agg: dict[tuple[str, int], list[float]] = {(k, b): [] for k in batched for b in batches}
    for r in range(a.rounds):
        for b in batches:
            for name, (fn, m, _) in batched.items():
                agg[(name, b)].append(fn(m, ids.repeat(b, 1), a.new_tokens)[1])
        print(f"batched round {r + 1} done", flush=True)
    brows = []
    for name in batched:
        med = [statistics.median(agg[(name, b)]) for b in batches]
        brows.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in med) + f" | {med[-1] / med[0]:.2f}× |")
    prof = profile_summary(w4, ids)
    per_tok, layers_ms, head_ms = time_split(w4, ids)
    wbytes = bytes_read_per_token(w4)
    split = (
        f"Per decoded token (efflm 4-bit, batch 1, 32 steps): {per_tok:.2f} ms, of which {layers_ms:.2f} ms "
        f"({layers_ms / per_tok:.0%}) in the fused C step over all decoder layers, {head_ms:.2f} ms "
        f"({head_ms / per_tok:.0%}) in the int8 lm_head, and {per_tok - layers_ms - head_ms:.2f} ms in the rest "
        f"(embedding, RoPE tables, cache bookkeeping, argmax, Python: the torch ops below). The whole token "
        f"streams {wbytes / 1e6:.1f} MB: {wbytes / 1e6 / per_tok:.1f} GB/s against the {bw:.1f} GB/s measured."
    )
    md = "\n".join(
        [
            f"# Decode speed: efflm vs llama.cpp vs transformers — {a.model}, {a.threads} threads",
            "",
            "## Batch 1",
            "",
            f"{a.prompt_len}-token prompt, {a.new_tokens} new tokens, greedy; median of {a.rounds} interleaved rounds. "
            f"Ceiling = {bw:.1f} GB/s measured read bandwidth / MB read per token.",
            "",
            "| engine | decode tok/s | TTFT ms | × llama.cpp Q4_0 | × transformers bf16 | MB read per token | % of ceiling |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"## Batched decode: aggregate tok/s (same {a.prompt_len}-token prompt in every row, {a.new_tokens} "
            f"new tokens, median of {a.rounds} interleaved rounds)",
            "",
            "| engine | "
            + " | ".join(f"batch {b}" for b in batches)
            + f" | batch {batches[-1]} / batch {batches[0]} |",
            "|---|" + "---|" * (len(batches) + 1),
            *brows,
            "",
            "## Where the time goes",
            "",
            split,
            "",
            "Torch ops of the efflm 4-bit decode (torch profiler, 16 decode steps; the C calls are not listed):",
            "",
            *prof,
            "",
            f"Command: `python benchmarks/vs_llamacpp.py --model {a.model} --prompt-len {a.prompt_len} "
            f"--new-tokens {a.new_tokens} --rounds {a.rounds} --batches {a.batches}`.",
        ]
    )
    tmp.cleanup()
    return publish(a.out, md)


if __name__ == "__main__":
    raise SystemExit(main())
