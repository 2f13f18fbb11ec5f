"""GPU check: 2:4 semi-structured sparse matmul vs dense, at the default model's shapes and 4096-wide.

    python3 efflm/bench/gpu_sparse24.py [--out results/gpu_sparse24.md]

Needs a CUDA GPU with sparse tensor cores (Ampere or newer); imports torch only, so it runs
on a bare GPU machine. Each weight [out, in] gets a 2:4 mask (the 2 largest |w| of every 4
consecutive inputs: the pattern SparseGPT/Wanda 2:4 produce; the kernel's speed depends on the
shapes and the pattern, not on which weights survive) and is converted with
``torch.sparse.to_sparse_semi_structured``. Timed: y = W·X for X [in, tokens] in fp16, CUDA
events, median of 50 after 10 warm-ups; the sparse result is checked against the dense
product of the masked weight.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

SHAPES = {  # (out, in) of each decoder Linear
    "smollm2 q/o_proj": (576, 576), "smollm2 k/v_proj": (192, 576), "smollm2 gate/up_proj": (1536, 576),
    "smollm2 down_proj": (576, 1536), "4096 square": (4096, 4096), "4096 up (11008x4096)": (11008, 4096),
    "4096 down (4096x11008)": (4096, 11008)}
TOKENS = (16, 128, 2048)


def mask_2_4(w: torch.Tensor) -> torch.Tensor:
    g = w.reshape(w.shape[0], -1, 4)
    keep = g.abs().topk(2, dim=-1).indices
    return torch.zeros_like(g).scatter(-1, keep, g.gather(-1, keep)).reshape(w.shape)


def timed(fn, reps: int = 50, warmup: int = 10) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1000)
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="results/gpu_sparse24.md")
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_sparse24: needs a CUDA GPU")
    from torch.nn.functional import linear
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    torch.manual_seed(0)
    lines = [f"2:4 semi-structured vs dense fp16 y = linear(x, W) on {torch.cuda.get_device_name()} "
             f"(torch {torch.__version__}); median of 50, microseconds.", "",
             "| backend | weight | out x in | tokens | dense µs | 2:4 µs | speedup | max rel err |",
             "|---|---|---|---|---|---|---|---|"]
    for backend in ("cusparselt", "cutlass"):
        SparseSemiStructuredTensor._FORCE_CUTLASS = backend == "cutlass"
        for name, (out, inp) in SHAPES.items():
            w = mask_2_4(torch.randn(out, inp, device="cuda", dtype=torch.float16))
            try:
                ws = to_sparse_semi_structured(w)
            except Exception as e:  # shape or hardware the kernel does not take
                lines.append(f"| {backend} | {name} | {out}x{inp} | – | – | – | unsupported: "
                             f"{str(e).splitlines()[0][:80]} | – |")
                continue
            for t in TOKENS:
                x = torch.randn(t, inp, device="cuda", dtype=torch.float16)
                try:
                    ys = linear(x, ws)
                except Exception as e:
                    lines.append(f"| {backend} | {name} | {out}x{inp} | {t} | – | – | unsupported: "
                                 f"{str(e).splitlines()[0][:80]} | – |")
                    continue
                yd = linear(x, w)
                err = ((ys.float() - yd.float()).abs().max() / yd.float().abs().max()).item()
                td, tsp = timed(lambda: linear(x, w)), timed(lambda: linear(x, ws))
                lines.append(f"| {backend} | {name} | {out}x{inp} | {t} | {td:.1f} | {tsp:.1f} | {td / tsp:.2f}x "
                             f"| {err:.1e} |")
    text = "\n".join(lines)
    print(text)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
