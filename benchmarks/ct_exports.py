"""Every compressed-tensors scheme efflm writes, on the default model: bytes on disk, perplexity in
efflm and in transformers (which reads the directory with compressed-tensors) on the same token
windows, and transformers' decode speed on the CPU.

    python benchmarks/ct_exports.py [--model smollm2-135m] [--windows 4] [--seq-len 512]
        [--rounds 3] [--new 32] [--threads 2]

Rows: W4A16 (GPTQ, 4-bit, groups of 64: SmolLM2's 576-wide inputs take no 128-groups; and
asymmetric with integer zero points, ``scales: int_zero_point``), W8A16
(GPTQ, 8-bit per output channel), W8A8 INT8 (SmoothQuant; per-channel int8 weights, dynamic
per-token int8 activations), FP8 (ZeroQuant-FP E4M3 weights per channel, dynamic per-token E4M3
activations), MXFP4 (ZeroQuant-FP E2M1 weights, groups of 32, power-of-two scales) and NVFP4
(groups of 16, E4M3 scales under one power of two per tensor), weights only, and a mixed model
(SmoothQuant W8A8 on attention, GPTQ W4A16 on the MLP: two config groups), each applied by efflm's pipeline (default calibration), scored by efflm, written by
``efflm.io.compressed_tensors`` and loaded with ``AutoModelForCausalLM.from_pretrained`` (float32
requested, bfloat16 for FP4, which transformers computes in; transformers decompresses the
weights on the CPU, as it must without vLLM's kernels),
scored again on the same ids. The dense row is the float model in both. Decode: transformers'
``generate``, ``--new`` greedy tokens after a 32-token prompt, ``--threads`` threads, every model
in each of ``--rounds`` interleaved rounds after one warm-up, median. Writes
``results/ct_exports.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHEMES = {
    "W4A16": {"method": "gptq", "bits": 4, "group_size": 64},
    "W4A16 asym": {"method": "gptq", "bits": 4, "group_size": 64, "symmetric": False, "scales": "int_zero_point"},
    "W8A16": {"method": "gptq", "bits": 8, "group_size": -1},
    "W8A8 INT8": {"method": "smoothquant"},
    "FP8 W8A8": {"method": "zeroquant_fp", "weight_format": "e4m3", "group_size": -1, "act_format": "e4m3"},
    "MXFP4 A16": {"method": "zeroquant_fp", "weight_format": "e2m1", "group_size": 32, "pow2_scales": True,
                  "act_format": "none"},
    "NVFP4 A16": {"method": "zeroquant_fp", "weight_format": "e2m1", "group_size": 16, "e4m3_scales": True,
                  "act_format": "none"},
    "mixed W8A8 attention + W4A16 MLP": [
        {"method": "smoothquant", "targets": ["re:.*self_attn.*"]},
        {"method": "gptq", "bits": 4, "group_size": 64, "targets": ["re:.*mlp.*"]},
    ],
}  # fmt: skip
BF16_ONLY = {"MXFP4 A16", "NVFP4 A16"}  # transformers decompresses FP4 to bfloat16 and computes in it


def scheme_row(args, name: str, ids, tmp: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from efflm.core import recipe as recipes
    from efflm.eval.metrics import perplexity
    from efflm.io.compressed_tensors import export
    from efflm.pipeline import load_and_apply

    steps = SCHEMES[name] if isinstance(SCHEMES[name], list) else [SCHEMES[name]]
    model, tok = load_and_apply(args.model, recipes.from_yaml(json.dumps(steps)))
    with torch.no_grad():
        ours = perplexity(model, ids, args.seq_len, args.windows)["ppl"]
    out = export(model, tok, tmp / name.replace(" ", "-"))
    del model
    dtype = torch.bfloat16 if name in BF16_ONLY else torch.float32
    back = AutoModelForCausalLM.from_pretrained(out, dtype=dtype).eval()
    fmt = json.loads((out / "config.json").read_text())["quantization_config"]["format"]
    return {"scheme": name, "method": " + ".join(s["method"] for s in steps), "format": fmt, "model": back, "efflm_ppl": ours,
            "bytes": sum(f.stat().st_size for f in out.glob("*.safetensors"))}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "results" / "ct_exports.md"))
    args = ap.parse_args(argv)
    import torch

    from efflm.core.atomic import publish
    from efflm.datasets.text import eval_tokens
    from efflm.eval.metrics import hf_greedy_timing, perplexity
    from efflm.io.load import load
    from efflm.models.sources import weights_dir

    torch.set_num_threads(args.threads)
    dense, tok = load(args.model)
    ids = eval_tokens(tok)
    with torch.no_grad():
        ppl = perplexity(dense, ids, args.seq_len, args.windows)["ppl"]
    size = (
        sum(f.stat().st_size for f in weights_dir(args.model).glob("*.safetensors")) if weights_dir(args.model) else 0
    )
    rows = [{"scheme": "dense", "method": "–", "format": "–", "model": dense, "efflm_ppl": ppl, "bytes": size}]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.schemes.split(","):
            rows.append(scheme_row(args, name, ids, Path(tmp)))
        with torch.no_grad():
            for r in rows:
                r["hf_ppl"] = perplexity(r["model"], ids, args.seq_len, args.windows)["ppl"]
            prompt = ids[:32].reshape(1, -1)
            for r in rows:  # warm-up
                hf_greedy_timing(r["model"], prompt, 4)
            speeds: dict[str, list[float]] = {r["scheme"]: [] for r in rows}
            for _ in range(args.rounds):
                for r in rows:
                    speeds[r["scheme"]].append(args.new / hf_greedy_timing(r["model"], prompt, args.new)[1])
    for r in rows:
        r["tps"] = statistics.median(speeds[r["scheme"]])
        del r["model"]
    print(json.dumps(rows, indent=1), file=sys.stderr)
    return publish(Path(args.out), table(args, rows))


def table(args, rows: list[dict]) -> str:
    import platform

    import compressed_tensors
    import torch
    import transformers

    cmd = "python benchmarks/ct_exports.py" + "".join(f" {a}" for a in map(shlex.quote, sys.argv[1:]))
    lines = [
        "# compressed-tensors exports on the default model: efflm beside transformers reading the file",
        "",
        f"Regenerate: `{cmd}`. Machine: {torch.get_num_threads()} threads, {platform.machine()}; transformers "
        f"{transformers.__version__}, compressed-tensors {compressed_tensors.__version__}. Model: {args.model} "
        f"(real weights). Perplexity: the evaluation split, {args.windows} windows of {args.seq_len} tokens, the "
        "same ids on every row, in efflm (its own modules and kernels) and in transformers (the exported directory, "
        "decompressed on load: CPU transformers has no packed kernels, so its speed is the dense model's; MXFP4 "
        "and NVFP4 load in bfloat16, the dtype transformers computes them in). "
        f"Decode: transformers' `generate`, {args.new} greedy tokens after a 32-token prompt, median of "
        f"{args.rounds} interleaved rounds. Recipes: "
        + "; ".join(f"{k}: `{json.dumps(v)}`" for k, v in SCHEMES.items())
        + ".",
        "",
        "| scheme | efflm method | compressed-tensors format | safetensors MB | ppl in efflm | ppl in transformers "
        "| transformers / efflm | transformers decode tok/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scheme']} | {r['method']} | {r['format']} | {r['bytes'] / 1e6:.1f} | {r['efflm_ppl']:.3f} | "
            f"{r['hf_ppl']:.3f} | {r['hf_ppl'] / r['efflm_ppl']:.4f} | {r['tps']:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
