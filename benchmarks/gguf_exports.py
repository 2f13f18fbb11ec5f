"""Every GGUF block type efflm writes, on the default model: bytes, perplexity in efflm and in
llama.cpp on the same token windows, llama.cpp's decode speed — beside llama.cpp's own
quantization of the same model to the same type.

    python benchmarks/gguf_exports.py [--model smollm2-135m] [--method gptq] [--windows 4]
        [--seq-len 512] [--rounds 3] [--new 64] [--threads 2]

efflm rows: ``--method`` (GPTQ by default; RTN also works) at each grid that is a llama.cpp block
type, groups of 32 (Q4_0: 4-bit symmetric, Q4_1: 4-bit asymmetric, Q5_0/Q5_1: 5-bit, Q8_0:
8-bit symmetric), and on the K-quant lattices (Q4_K, Q5_K, Q6_K: ``scales: Q4_K`` ... on every
Linear whose input width is a multiple of 256, llama.cpp's fallback type on the others — on
the default model only down_proj fits), applied by efflm's pipeline (default calibration),
scored by efflm, written by
``efflm.io.gguf_export`` (the codes unchanged) and scored again by llama.cpp (llama-cpp-python)
on the same token ids. llama.cpp rows: the dense model exported as F16 Linears, then quantized
by llama.cpp's ``llama_model_quantize`` to the same type (``token_embedding_type`` Q8_0, as
efflm's export writes the embedding). Decode tok/s: llama.cpp generating ``--new`` greedy
tokens after a 32-token prompt, ``--threads`` threads, every file in each of ``--rounds``
interleaved rounds after one warm-up, median. Writes ``results/gguf_exports.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
TYPES = {"Q4_0": (4, True), "Q4_1": (4, False), "Q5_0": (5, True), "Q5_1": (5, False), "Q8_0": (8, True)}
FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}  # llama.cpp's type for rows not a multiple of 256


def steps(model: str, method: str, name: str) -> list[dict]:
    """The recipe writing GGUF type ``name``: a legacy type's grid, or a K-quant's lattice on every
    Linear whose input width is a multiple of 256 and llama.cpp's fallback type on the rest."""
    from efflm.models.arch import in_features
    from efflm.models.sources import model_config
    from efflm.nn.superblocks import KQUANTS, SUPER

    if name in TYPES:
        bits, symmetric = TYPES[name]
        return [{"method": method, "bits": bits, "group_size": 32, "symmetric": symmetric}]
    kq = KQUANTS[name]
    widths = in_features(model_config(model))
    fits = [n for n, w in widths.items() if w % SUPER == 0]
    pattern = f"re:.*\\.({'|'.join(map(re.escape, fits))})$"
    k = {"method": method, "bits": kq.bits, "group_size": kq.group_size, "symmetric": kq.symmetric, "scales": name}
    fallback = steps(model, method, FALLBACK[name])
    if not fits:
        return fallback
    rest = [{**fallback[0], "ignore": ["lm_head", pattern]}] if len(fits) < len(widths) else []
    return [{**k, "targets": [pattern]}, *rest]


def efflm_file(args, name: str, ids, tmp: Path) -> dict:
    from efflm.core import recipe as recipes
    from efflm.eval.metrics import perplexity
    from efflm.io.gguf_export import export
    from efflm.models.sources import gguf_source
    from efflm.pipeline import load_and_apply

    recipe = recipes.from_yaml(json.dumps(steps(args.model, args.method, name)))
    model, tok = load_and_apply(args.model, recipe)
    ppl = perplexity(model, ids, args.seq_len, args.windows)["ppl"]
    path = export(model, gguf_source(args.model), tmp / f"efflm-{name}.gguf", tok)
    return {"type": name, "side": f"efflm {args.method}", "path": path, "efflm_ppl": ppl}


def llama_quantize(dense: Path, name: str, tmp: Path, threads: int) -> Path:
    """llama.cpp's own quantization of the F16 export to type ``name`` — for a K-quant "pure" (every
    Linear that type, its own fallback where rows are not a multiple of 256: the same types efflm's
    file has), not a _S/_M mix."""
    from quant_bits import k_quant

    ftype = {"Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}.get(name, name)
    return k_quant(dense, name, tmp, threads, ftype=ftype, pure=name in FALLBACK)


def decode_tps(llm, prompt: list[int], new: int) -> float:
    import torch
    from vs_llamacpp import llama_run

    return llama_run(llm, torch.tensor([prompt]), new)[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--method", default="gptq", choices=["gptq", "rtn", "awq"])
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "results" / "gguf_exports.md"))
    args = ap.parse_args(argv)
    import llama_cpp
    import torch
    from quant_bits import dense_gguf, gguf_linear_bpw, llama_cpp_ppl
    from tqdm import tqdm

    from efflm.core.atomic import publish
    from efflm.datasets.text import eval_tokens
    from efflm.io.load import load
    from efflm.models.sources import gguf_source

    torch.set_num_threads(args.threads)
    _, tok = load(args.model)
    ids = eval_tokens(tok)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dense = dense_gguf(args, gguf_source(args.model), tmp)
        rows.append({"type": "F16", "side": "dense export", "path": dense, "efflm_ppl": None})
        for name in tqdm([*TYPES, *FALLBACK], desc="gguf_exports"):
            rows.append(efflm_file(args, name, ids, tmp))
            rows.append({"type": name, "side": "llama.cpp quantize", "path": llama_quantize(dense, name, tmp, args.threads),
                         "efflm_ppl": None})  # fmt: skip
        llms = {}
        for r in rows:
            r["bytes"] = r["path"].stat().st_size
            r["bpw"], r["stored"] = gguf_linear_bpw(r["path"])
            scorer = llama_cpp.Llama(model_path=str(r["path"]), n_ctx=args.seq_len, n_threads=args.threads,
                                     logits_all=True, verbose=False)  # fmt: skip
            r["llama_ppl"] = llama_cpp_ppl(scorer, ids, args.seq_len, args.windows)
            del scorer
            llms[r["path"]] = llama_cpp.Llama(model_path=str(r["path"]), n_ctx=256, n_threads=args.threads,
                                              verbose=False)  # fmt: skip
        prompt = ids[:32].tolist()
        for r in rows:  # warm-up
            decode_tps(llms[r["path"]], prompt, 8)
        speeds = {r["path"]: [] for r in rows}
        for _ in range(args.rounds):
            for r in rows:
                speeds[r["path"]].append(decode_tps(llms[r["path"]], prompt, args.new))
        for r in rows:
            r["tps"] = statistics.median(speeds[r["path"]])
            r["path"] = r["path"].name
    print(json.dumps(rows, indent=1), file=sys.stderr)
    return publish(Path(args.out), table(args, rows))


def table(args, rows: list[dict]) -> str:
    import platform

    import torch

    cmd = "python benchmarks/gguf_exports.py" + "".join(f" {a}" for a in map(shlex.quote, sys.argv[1:]))
    lines = [
        "# GGUF exports on the default model: efflm's codes beside llama.cpp's own quantization",
        "",
        f"Regenerate: `{cmd}`. Machine: {torch.get_num_threads()} threads, {platform.machine()}; "
        f"llama-cpp-python {__import__('llama_cpp').__version__}. Model: {args.model} (real weights). "
        f"Perplexity: the evaluation split, {args.windows} windows of {args.seq_len} tokens, the same ids on "
        f"every row. efflm rows: {args.method} with groups of 32, calibrated by efflm, written by "
        "`efflm compress --format gguf` (codes unchanged). llama.cpp rows: the F16 export quantized by "
        "`llama_model_quantize` to the same type. K-quant rows: the lattice on every Linear whose input width is "
        "a multiple of 256 and llama.cpp's own fallback type on the rest (Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → "
        "Q8_0), on both sides (llama.cpp's `pure` quantization: no _S/_M mix). Embedding Q8_0 on every "
        "quantized row. Decode: "
        f"{args.new} greedy tokens after a 32-token prompt, {args.threads} threads, median of {args.rounds} "
        "interleaved rounds.",
        "",
        "| GGUF type | written by | Linears stored as | Linear bits/weight | file MB | ppl in efflm | "
        "ppl in llama.cpp | llama.cpp / efflm | decode tok/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ours = r["efflm_ppl"]
        ratio = f"{r['llama_ppl'] / ours:.4f}" if ours else "–"
        lines.append(
            f"| {r['type']} | {r['side']} | {r['stored']} | {r['bpw']:.2f} | {r['bytes'] / 1e6:.1f} | {f'{ours:.3f}' if ours else '–'} | "
            f"{r['llama_ppl']:.3f} | {ratio} | {r['tps']:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
