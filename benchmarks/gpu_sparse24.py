"""GPU check: 2:4 semi-structured sparse matmul vs dense, at the default model's shapes and 4096-wide.

    python3 benchmarks/gpu_sparse24.py [--model SPEC] [--weights sgpt24.pt] [--out results/gpu_sparse24.md]

Needs a CUDA GPU with sparse tensor cores (Ampere or newer). Without ``--model`` it imports
torch only (the default model's shapes are listed below), so it runs on a bare GPU machine;
``--model SPEC`` takes the decoder Linears' shapes from that model's config (needs efflm). ``--weights``: a file of real 2:4 weights ({name: fp16 [out, in]},
e.g. SmolLM2's decoder Linears after ``sparsegpt`` with pattern 2:4); shapes without a real
weight get a random one masked to 2:4 (the kernel's speed depends on shape and pattern, not
on which weights survive). Each is converted with ``torch.sparse.to_sparse_semi_structured``
and timed as y = linear(x, W), fp16, x [tokens, in], two ways: eager (CUDA events around 20
back-to-back calls, so launch and host-side planning count, as a user sees them) and CUDA
graph replay (20 calls captured once: the kernels alone). Median of 30 after warm-up. The
sparse result is checked against the dense product of the same 2:4 weight.
"""

from __future__ import annotations

import argparse
import statistics

import torch

SHAPES = {  # (out, in) of each decoder Linear
    "smollm2 q/o_proj": (576, 576),
    "smollm2 k/v_proj": (192, 576),
    "smollm2 gate/up_proj": (1536, 576),
    "smollm2 down_proj": (576, 1536),
    "4096 square": (4096, 4096),
    "4096 up (11008x4096)": (11008, 4096),
    "4096 down (4096x11008)": (4096, 11008),
}
TOKENS = (1, 16, 128, 2048)
CALLS = 20


def mask_2_4(w: torch.Tensor) -> torch.Tensor:
    g = w.reshape(w.shape[0], -1, 4)
    keep = g.abs().topk(2, dim=-1).indices
    return torch.zeros_like(g).scatter(-1, keep, g.gather(-1, keep)).reshape(w.shape)


def is_2_4(w: torch.Tensor) -> bool:
    return bool(((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all())


def _median_us(run, reps: int = 30) -> float:
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        run()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1000 / CALLS)
    return statistics.median(times)


def eager_us(fn) -> float:
    def run():
        for _ in range(CALLS):
            fn()

    for _ in range(3):
        run()
    return _median_us(run)


def graph_us(fn) -> float | None:
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(CALLS):
                fn()
        g.replay()
        torch.cuda.synchronize()
    except Exception:  # a kernel that cannot be captured
        return None
    return _median_us(g.replay)


def model_shapes(spec: str) -> dict[str, tuple[int, int]]:
    """(out, in) of each distinct decoder Linear of a model spec, from its config."""
    from efflm.models.arch import in_features, out_features
    from efflm.models.sources import model_config

    cfg = model_config(spec)
    ins, outs = in_features(cfg), out_features(cfg)
    return {f"{spec} {name}": (outs[name], ins[name]) for name in ins}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/gpu_sparse24.py")
    p.add_argument("--model", help="take the Linear shapes from this model (default: SmolLM2's, listed)")
    p.add_argument("--weights", default="")
    p.add_argument("--out", default="results/gpu_sparse24.md")
    a = p.parse_args(argv)
    shapes = model_shapes(a.model) if a.model else SHAPES
    if not torch.cuda.is_available():
        raise SystemExit(f"gpu_sparse24: needs a CUDA GPU (shapes to time: {len(shapes)})")
    from torch.nn.functional import linear
    from torch.sparse import to_sparse_semi_structured

    torch.manual_seed(0)
    real = torch.load(a.weights, weights_only=True) if a.weights else {}
    weights = {f"{n} (SparseGPT 2:4)": w for n, w in real.items()}
    for name, (out, inp) in shapes.items():
        if not any(tuple(w.shape) == (out, inp) for w in real.values()):
            weights[f"{name} (random 2:4)"] = mask_2_4(torch.randn(out, inp, dtype=torch.float16))
    lines = [
        f"2:4 semi-structured vs dense fp16 y = linear(x, W) on {torch.cuda.get_device_name()} "
        f"(torch {torch.__version__}); µs per call, median of 30 x {CALLS} calls.",
        "",
        "| weight | out x in | tokens | dense eager | 2:4 eager | speedup eager | dense graph | 2:4 graph "
        "| speedup graph | max rel err |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, w in weights.items():
        w = w.to("cuda", torch.float16)
        assert is_2_4(w), f"{name} is not 2:4 sparse"
        out, inp = w.shape
        try:
            ws = to_sparse_semi_structured(w)
        except Exception as e:
            lines.append(f"| {name} | {out}x{inp} | – | unsupported: {str(e).splitlines()[0][:80]} |||||||")
            continue
        for t in TOKENS:
            x = torch.randn(t, inp, device="cuda", dtype=torch.float16)
            try:
                ys = linear(x, ws)
            except Exception as e:
                lines.append(f"| {name} | {out}x{inp} | {t} | unsupported: {str(e).splitlines()[0][:80]} |||||||")
                continue
            yd = linear(x, w)
            err = ((ys.float() - yd.float()).abs().max() / yd.float().abs().max()).item()
            de, se = eager_us(lambda: linear(x, w)), eager_us(lambda: linear(x, ws))
            dg, sg = graph_us(lambda: linear(x, w)), graph_us(lambda: linear(x, ws))
            graph = (
                f"{dg:.1f} | {sg:.1f} | {dg / sg:.2f}x"
                if dg and sg
                else f"{dg or float('nan'):.1f} | not capturable | –"
            )
            lines.append(f"| {name} | {out}x{inp} | {t} | {de:.1f} | {se:.1f} | {de / se:.2f}x | {graph} | {err:.1e} |")
            print(lines[-1], flush=True)
    from efflm.core.atomic import publish

    return publish(a.out, "\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
