"""Side by side with llm-compressor: GPTQ, AWQ, SparseGPT and Wanda, same model, calibration
windows and evaluation.

    python -m efflm.bench.vs_llmcompressor [--methods gptq,awq,sparsegpt,wanda,sparsegpt:2:4]

Needs ``pip install 'efflm[anchors]'``. Quantization: both libraries quantize every decoder
Linear to W4 symmetric with groups of 64 (explicit config groups: llm-compressor's W4A16
preset uses groups of 128, which do not divide SmolLM2's 576-wide inputs). Pruning: 50%
unstructured, or the N:M pattern after the colon, dampening 0.01, blocks of 128. lm_head is
left alone. Each run starts from a fresh copy of the model; wall time covers the algorithm
only. Prints the table and writes ``--out`` (default ``results/vs_llmcompressor.md``).
"""
from __future__ import annotations

import argparse
import time

import torch

from efflm.core.atomic import publish
from efflm.core.errors import EfflmError
from efflm.data import text
from efflm.eval.metrics import perplexity
from efflm.io.load import load
from efflm.methods import config_from_dict, get

SCHEME = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 64}


def _split(method: str) -> tuple[str, str]:
    name, _, pattern = method.partition(":")
    return name, pattern or "unstructured"


def _label(method: str) -> str:
    name, pattern = _split(method)
    if name in ("gptq", "awq"):
        return f"{name} W4 sym g64"
    return f"{name} {'50%' if pattern == 'unstructured' else pattern}"


def _llmc_recipe(method: str):
    name, pattern = _split(method)
    if name in ("sparsegpt", "wanda"):
        from llmcompressor.modifiers.pruning import WandaPruningModifier
        from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier

        structure = "0:0" if pattern == "unstructured" else pattern
        if name == "wanda":
            return WandaPruningModifier(sparsity=0.5, mask_structure=structure, ignore=["re:.*lm_head"])
        return SparseGPTModifier(sparsity=0.5, mask_structure=structure, dampening_frac=0.01, block_size=128,
                                 ignore=["re:.*lm_head"])
    if method == "gptq":
        from llmcompressor.modifiers.quantization import GPTQModifier

        return GPTQModifier(config_groups={"g": {"targets": ["Linear"], "weights": SCHEME}}, ignore=["lm_head"])
    from llmcompressor.modifiers.awq import AWQModifier

    return AWQModifier(config_groups={"g": {"targets": ["Linear"], "weights": SCHEME}}, ignore=["lm_head"])


def run_llmcompressor(model_spec: str, method: str, calib: torch.Tensor) -> tuple[torch.nn.Module, float]:
    from datasets import Dataset
    from llmcompressor import oneshot

    model, _ = load(model_spec)
    data = Dataset.from_dict({"input_ids": calib.tolist(), "attention_mask": torch.ones_like(calib).tolist()})
    t0 = time.perf_counter()
    oneshot(model=model, dataset=data, recipe=_llmc_recipe(method), num_calibration_samples=calib.shape[0],
            max_seq_length=calib.shape[1])
    return model, time.perf_counter() - t0


def run_efflm(model_spec: str, method: str, calib: torch.Tensor) -> tuple[torch.nn.Module, float]:
    import efflm.methods  # noqa: F401

    name, pattern = _split(method)
    if name in ("sparsegpt", "wanda"):
        cfg = config_from_dict({"method": name, "sparsity": 0.5, "pattern": pattern})
    else:
        extra = {"duo_scaling": True} if method == "awq" else {}  # llm-compressor's AWQ default
        cfg = config_from_dict({"method": method, "bits": 4, "group_size": 64, "symmetric": True, **extra})
    model, _ = load(model_spec)
    t0 = time.perf_counter()
    model = get(name).apply(model, cfg, calib)
    return model, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m efflm.bench.vs_llmcompressor")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--methods", default="gptq,awq")
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--calib-len", type=int, default=512)
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="results/vs_llmcompressor.md")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    try:
        import llmcompressor  # noqa: F401
    except ImportError:
        raise SystemExit("efflm: error: needs llm-compressor: pip install 'efflm[anchors]'") from None
    _, tok = load(a.model)
    calib = text.calibration_windows(tok, a.calib_samples, a.calib_len, seed=0)
    ids = text.eval_tokens(tok, 512 * a.windows)
    rows = []
    for method in [m.strip() for m in a.methods.split(",") if m.strip()]:
        res, failed = {}, {}
        for who, fn in (("efflm", run_efflm), ("llm-compressor", run_llmcompressor)):
            try:
                model, secs = fn(a.model, method, calib)
                res[who] = (perplexity(model.eval(), ids, 512, a.windows)["ppl"], secs)
                print(f"{who:15s} {method}: ppl {res[who][0]:.3f}  {res[who][1]:.1f} s", flush=True)
            except (EfflmError, RuntimeError, ValueError, TypeError, AttributeError) as e:
                failed[who] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
                print(f"{who} {method} failed: {failed[who]}", flush=True)
        if failed:
            cells = [f"{res[w][0]:.3f}" if w in res else f"failed ({failed[w]})" for w in ("efflm", "llm-compressor")]
            times = [f"{res[w][1]:.1f}" if w in res else "–" for w in ("efflm", "llm-compressor")]
            rows.append(f"| {_label(method)} | {cells[0]} | {cells[1]} | – | {times[0]} | {times[1]} | – |")
            continue
        (pe, te), (pl, tl) = res["efflm"], res["llm-compressor"]
        rows.append(f"| {_label(method)} | {pe:.3f} | {pl:.3f} | {pe / pl:.3f} | {te:.1f} | {tl:.1f} | {te / tl:.2f} |")
    table = "\n".join([
        f"efflm vs llm-compressor on {a.model}: {a.calib_samples} x {a.calib_len} calibration tokens, "
        f"perplexity over {a.windows} x 512 evaluation tokens, {a.threads} threads.", "",
        "| method | efflm ppl | llm-compressor ppl | ppl ratio | efflm s | llm-compressor s | time ratio |",
        "|---|---|---|---|---|---|---|", *rows])
    return publish(a.out, table)


if __name__ == "__main__":
    raise SystemExit(main())
