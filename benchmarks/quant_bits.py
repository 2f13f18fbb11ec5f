"""Perplexity against bits per weight: efflm's quantizers at 2, 3, 4 and 8 bits beside
llama.cpp's own k-quants of the same model, scored on the same token windows.

    python benchmarks/quant_bits.py [--model smollm2-135m] [--windows 4] [--seq-len 512]
                                    [--text-file PATH --text-name NAME] [--extra-text NAME=PATH ...]
                                    [--only LABEL,...] [--no-llama-cpp] [--cache FILE]

efflm rows: each recipe applied by efflm's pipeline (calibration: efflm's default windows),
plus ``int8_embeddings`` on every row, so the tied embedding/lm_head is int8 on both sides.
llama.cpp rows: the dense model exported to GGUF (linear weights in f16, embedding Q8_0), then
quantized by llama.cpp's own ``llama_model_quantize`` (llama-cpp-python) to each k-quant
type with ``token_embedding_type`` Q8_0, and scored by llama.cpp on exactly the same token
ids. Bits per weight: ``linear bpw`` counts every stored byte of the decoder Linears (codes,
scales, tables, outliers; for GGUF, the tensors' bytes as written) over their weights;
``model bpw`` is the whole model's bytes over its parameters (llama.cpp's own
``llama_model_size``/``llama_model_n_params`` for its rows). ``--extra-text`` scores every
quantized model on further texts too (a column each), so a second text costs no second
quantization. Writes ``--out`` (default ``results/quant_bits.md``) and a bits-vs-perplexity plot
beside it; ``--cache FILE`` keeps each finished row (per clean commit) so a run can resume.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
G64 = {"group_size": 64}
ROWS: dict[str, list[dict]] = {
    "dense (fp32 linears)": [],
    "rtn W8 per-channel": [{"method": "rtn", "bits": 8, "group_size": -1}],
    "rtn W4 g64": [{"method": "rtn", "bits": 4, **G64}],
    "rtn W3 g64": [{"method": "rtn", "bits": 3, **G64}],
    "rtn W2 g64": [{"method": "rtn", "bits": 2, **G64}],
    "gptq W4 g64": [{"method": "gptq", "bits": 4, **G64}],
    "gptq W3 g64": [{"method": "gptq", "bits": 3, **G64}],
    "gptq W2 g64": [{"method": "gptq", "bits": 2, **G64}],
    "awq W4 g64": [{"method": "awq", "bits": 4, **G64}],
    "awq W3 g64": [{"method": "awq", "bits": 3, **G64}],
    "squeezellm 4-bit (0.45% sparse)": [{"method": "squeezellm", "bits": 4}],
    "squeezellm 3-bit (0.45% sparse)": [{"method": "squeezellm", "bits": 3}],
    "squeezellm 3-bit dense-only": [{"method": "squeezellm", "bits": 3, "outliers": 0.0, "sensitive": 0.0}],
    "quip W2 g64": [{"method": "quip", "bits": 2, **G64}],
    "quip W2 g64 (min/max grid)": [{"method": "quip", "bits": 2, **G64, "symmetric": False}],
    "quip W3 g64": [{"method": "quip", "bits": 3, **G64}],
    "quip W4 g64": [{"method": "quip", "bits": 4, **G64}],
    "spqr 3-bit (g16, 3-bit stats, outliers)": [{"method": "spqr", "bits": 3}],
    "spqr 4-bit (g16, 3-bit stats, outliers)": [{"method": "spqr", "bits": 4}],
    "spqr 2-bit (g16, 3-bit stats, outliers)": [{"method": "spqr", "bits": 2}],
    "zeroquant W4A8 + LKD": [{"method": "zeroquant", "bits": 4, **G64, "act_bits": 8}],
    "zeroquant W8A8 (no LKD)": [{"method": "zeroquant", "bits": 8, **G64, "act_bits": 8, "lkd_steps": 0}],
    "zeroquant_fp W4 FP4 (weight-only)": [{"method": "zeroquant_fp", "weight_format": "e2m1", "act_format": "none"}],
    "zeroquant_fp W4A8 (FP4 + FP8 e4m3)": [{"method": "zeroquant_fp", "weight_format": "e2m1", "act_format": "e4m3"}],
    "zeroquant_fp W8A8 (FP8 e4m3)": [{"method": "zeroquant_fp", "weight_format": "e4m3", "act_format": "e4m3"}],
    "w8a8 (naive int8)": [{"method": "w8a8"}],
    "llm_int8 (threshold 6)": [{"method": "llm_int8"}],
    "smoothquant W8A8": [{"method": "smoothquant"}],
}
K_QUANTS = ["Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K"]
LINEAR_NAMES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def stored_as(counts: Counter) -> str:
    return ", ".join(f"{name} ×{n}" for name, n in counts.most_common())


def linear_bpw(model) -> tuple[float, str]:
    """Stored bits per weight of the decoder Linears (every buffer and weight they hold), and
    which modules hold them."""
    from efflm.models.arch import decoder_linears

    bits = weights = 0
    kinds = Counter()
    for _, m in decoder_linears(model):
        kinds[type(m).__name__] += 1
        weights += m.in_features * m.out_features
        tensors = {id(t): t for t in [*m.buffers(), *m.parameters()] if t is not getattr(m, "bias", None)}
        bits += 8 * sum(t.numel() * t.element_size() for t in tensors.values())
    return bits / weights, stored_as(kinds)


def scores(model_ppl, texts: dict) -> tuple[float, dict]:
    """The first text's perplexity, and every further text's by name."""
    (first, *rest) = texts.items()
    return model_ppl(first[1]), {name: model_ppl(ids) for name, ids in rest}


def efflm_row(args, label: str, texts: dict) -> dict:
    from efflm.core import recipe as recipes
    from efflm.eval.metrics import model_bytes, perplexity
    from efflm.pipeline import load_and_apply

    steps = ROWS[label] + [{"method": "int8_embeddings"}]
    model, _ = load_and_apply(args.model, recipes.from_yaml(json.dumps(steps)))
    ppl, extra = scores(lambda ids: perplexity(model, ids, args.seq_len, args.windows)["ppl"], texts)
    bpw, kinds = linear_bpw(model)
    return {"label": label, "side": "efflm", "ppl": ppl, "extra_ppl": extra, "linear_bpw": bpw,
            "stored_as": kinds, "model_bpw": 8 * model_bytes(model) / args.n_params}  # fmt: skip


def dense_gguf(args, source: Path, tmp: Path) -> Path:
    from efflm.io.gguf_export import export
    from efflm.io.load import load

    model, tok = load(args.model)
    return export(model, source, tmp / "dense.gguf", tok)


def k_quant(src: Path, name: str, tmp: Path, threads: int, ftype: str | None = None, pure: bool = False) -> Path:
    """llama.cpp's ``llama_model_quantize`` of ``src`` to file type ``ftype`` (default ``name``); ``pure``:
    every tensor that type (its own fallback where rows do not fit), not the _S/_M mix."""
    import llama_cpp

    out = tmp / f"{name}.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype or name}")
    params.pure = pure
    params.token_embedding_type = llama_cpp.GGML_TYPE_Q8_0
    params.allow_requantize = True  # the exported embedding is Q8_0 already
    params.nthread = threads
    if llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), params) != 0:
        raise RuntimeError(f"llama.cpp could not quantize to {name}")
    return out


def gguf_linear_bpw(path: Path) -> tuple[float, str]:
    """The decoder Linears' bits per weight as written, and the tensor types llama.cpp chose."""
    from gguf import GGUFReader

    bits = weights = 0
    kinds = Counter()
    for t in GGUFReader(path).tensors:
        if t.name.startswith("blk.") and t.name.split(".")[2] in LINEAR_NAMES:
            bits += 8 * int(t.n_bytes)
            weights += int(t.n_elements)
            kinds[t.tensor_type.name] += 1
    return bits / weights, stored_as(kinds)


def llama_cpp_ppl(llm, ids, seq_len: int, windows: int) -> float:
    """llama.cpp's perplexity over the same windows efflm's ``perplexity`` scores."""
    import numpy as np
    import torch

    n = min(windows, ids.numel() // seq_len)
    nll, count = 0.0, 0
    for w in range(n):
        x = ids[w * seq_len : (w + 1) * seq_len].tolist()
        llm.reset()
        llm.eval(x)
        logp = torch.log_softmax(torch.tensor(np.array(llm.scores[:seq_len]), dtype=torch.float64), -1)
        nll -= logp[:-1].gather(1, torch.tensor(x[1:])[:, None]).sum().item()
        count += seq_len - 1
    return math.exp(nll / count)


def llama_cpp_row(path: Path, name: str, ids, seq_len: int, windows: int, threads: int, extra=None) -> dict:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=seq_len, n_threads=threads, logits_all=True, verbose=False)
    ppl, extra = scores(lambda t: llama_cpp_ppl(llm, t, seq_len, windows), {"": ids, **(extra or {})})
    model_bpw = 8 * llama_cpp.llama_model_size(llm.model) / llama_cpp.llama_model_n_params(llm.model)
    bpw, kinds = gguf_linear_bpw(path)
    return {"label": f"llama.cpp {name}", "side": "llama.cpp", "ppl": ppl, "extra_ppl": extra,
            "linear_bpw": bpw, "stored_as": kinds, "model_bpw": model_bpw}  # fmt: skip


def table(args, rows: list[dict]) -> str:
    text = args.text_name or "the evaluation split"
    lines = [
        "# Perplexity against bits per weight",
        "",
        f"`python benchmarks/quant_bits.py --model {args.model} --windows {args.windows} --seq-len {args.seq_len}"
        + (f" --text-file {args.text_file} --text-name {shlex.quote(args.text_name)}" if args.text_file else "")
        + "".join(f" --extra-text {shlex.quote(e)}" for e in args.extra_text)
        + f"`. Text: {text}"
        + "".join(f", and {name} (its own columns)" for name in args.extra)
        + f"; {args.windows} windows of {args.seq_len} tokens, the same token ids on both sides. "
        "Every row's embedding/lm_head is int8 (efflm: `int8_embeddings`; llama.cpp: `token_embedding_type` "
        "Q8_0). llama.cpp rows: the dense model exported to GGUF (f16 linears) and quantized by llama.cpp's "
        "`llama_model_quantize`; llama.cpp falls back to other block types for tensors whose rows are not a "
        "multiple of 256, which its linear bpw and the last column (the tensor types it wrote) show."
        + (" This model has no GGUF source to export from: no llama.cpp rows." if args.no_gguf else ""),
        "",
        "| method | side | linear bpw | model bpw | ppl | Δppl vs dense |"
        + "".join(f" ppl ({name}) | Δ ({name}) |" for name in args.extra)
        + " decoder Linears stored as |",
        "|---|---|---|---|---|---|" + "---|---|" * len(args.extra) + "---|",
    ]
    dense = next(r for r in rows if r["label"] == "dense (fp32 linears)")
    for r in sorted(rows, key=lambda r: (-r["linear_bpw"], r["ppl"])):
        cells = [(r["ppl"], dense["ppl"])] + [(r["extra_ppl"][n], dense["extra_ppl"][n]) for n in args.extra]
        lines.append(f"| {r['label']} | {r['side']} | {r['linear_bpw']:.2f} | {r['model_bpw']:.2f} |"
                     + "".join(f" {p:.2f} | {100 * (p / d - 1):+.1f}% |" for p, d in cells)
                     + f" {r['stored_as']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for side, marker in (("efflm", "o"), ("llama.cpp", "s")):
        pts = [r for r in rows if r["side"] == side and math.isfinite(r["ppl"])]
        ax.scatter([r["linear_bpw"] for r in pts], [r["ppl"] for r in pts], marker=marker, label=side)
        for r in pts:
            ax.annotate(r["label"].removeprefix("llama.cpp "), (r["linear_bpw"], r["ppl"]), fontsize=6)
    ax.set(xlabel="bits per weight (decoder Linears, everything stored)", ylabel="perplexity", yscale="log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--text-file", help="score this text instead of the evaluation split")
    ap.add_argument("--text-name", help="the text's name, for the table")
    ap.add_argument(
        "--extra-text",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="also score every model on this text (repeatable)",
    )
    ap.add_argument("--cache", help="JSON file keeping finished rows, per clean commit")
    ap.add_argument("--only", help="comma-separated labels (efflm rows and/or K-quant names)")
    ap.add_argument("--no-llama-cpp", action="store_true")
    ap.add_argument("--threads", type=int, default=2, help="torch and llama.cpp threads")
    ap.add_argument("--out", default=str(ROOT / "results" / "quant_bits.md"))
    args = ap.parse_args(argv)
    if args.text_file and not args.text_name:
        ap.error("--text-file needs --text-name")
    args.extra = {}  # name -> path
    for e in args.extra_text:
        name, sep, path = e.partition("=")
        if not (sep and name and Path(path).is_file()):
            ap.error(f"--extra-text {e!r}: expected NAME=PATH of a readable file")
        args.extra[name] = path
    only = set(args.only.split(",")) if args.only else None
    import torch
    from tqdm import tqdm

    from efflm.bench.run_cache import cached
    from efflm.core.atomic import publish
    from efflm.datasets.text import eval_tokens, read_text_file, tokenize
    from efflm.io.load import load
    from efflm.models.sources import gguf_source

    torch.set_num_threads(args.threads)
    model, tok = load(args.model)
    args.n_params = sum(p.numel() for p in model.parameters())
    ids = tokenize(tok, read_text_file(args.text_file)).flatten() if args.text_file else eval_tokens(tok)
    extra = {name: tokenize(tok, read_text_file(path)).flatten() for name, path in args.extra.items()}
    del model
    labels = [x for x in ROWS if only is None or x in only or x == "dense (fp32 linears)"]
    source = gguf_source(args.model)
    args.no_gguf = source is None  # no tokenizer metadata to export (tiny-llama): no llama.cpp rows
    quants = [] if args.no_llama_cpp or source is None else [q for q in K_QUANTS if only is None or q in only]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = dense_gguf(args, source, Path(tmp)) if quants else None
        for item in tqdm([*labels, *quants], desc="quant_bits"):
            key = json.dumps([args.model, args.windows, args.seq_len, args.text_file, args.extra_text, item])
            if item in ROWS:
                rows.append(cached(args.cache, key, lambda: efflm_row(args, item, {"": ids, **extra}), __file__))
            else:
                rows.append(cached(args.cache, key, lambda: llama_cpp_row(
                    k_quant(src, item, Path(tmp), args.threads), item, ids, args.seq_len, args.windows,
                    args.threads, extra), __file__))  # fmt: skip
            print(json.dumps(rows[-1]), file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(rows, out.with_suffix(".png"))
    publish(out.with_suffix(".json"), json.dumps(rows, indent=1) + "\n")
    return publish(out, table(args, rows))


if __name__ == "__main__":
    sys.exit(main())
