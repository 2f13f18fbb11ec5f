"""Side by side with llm-compressor: GPTQ, AWQ, SparseGPT and Wanda, same model, calibration
windows and evaluation, every option set explicitly on both sides.

    python benchmarks/vs_llmcompressor.py [--model SPEC] [--methods gptq,awq,sparsegpt,wanda,sparsegpt:2:4]

Needs ``pip install 'efflm[anchors]'``. What each side runs (also printed under the table):

* GPTQ: W4 symmetric, groups of 64, static activation ordering, dampening 0.01, blocks of
  128 columns (llm-compressor: ``GPTQModifier(actorder="static", dampening_frac=0.01,
  block_size=128)``; its W4A16 preset's groups of 128 do not divide SmolLM2's 576 inputs);
* AWQ: W4 symmetric g64, duo scaling, a 20-point α grid, no clipping search (llm-compressor's
  AWQ has none, so efflm runs ``clip: false``), cached activations not offloaded;
* SparseGPT: 50% unstructured or the N:M pattern after the colon, dampening 0.01, blocks of
  128, no OWL profile; Wanda: the same sparsity, no OWL profile.

GPTQ and SparseGPT run twice on efflm's side: its default (``true_sequential``) and
llm-compressor's layer order. lm_head is left alone. Each run starts from a fresh copy of the loaded model and the same
calibration token ids in memory; the clock covers the same scope on both sides, from there
to the compressed model in memory: efflm validates the config and runs ``apply``;
llm-compressor wraps the ids in a ``datasets.Dataset`` and runs ``oneshot``. On a machine
without an accelerator, llm-compressor's AWQ needs one no-op patch (``cpu_pinning_workaround``,
said under the table). Prints the
table and writes ``--out`` (default ``results/vs_llmcompressor.md``).
"""

from __future__ import annotations

import argparse
import time

import torch

from efflm.core.atomic import publish
from efflm.core.errors import EfflmError
from efflm.datasets import text
from efflm.eval.metrics import perplexity
from efflm.io.load import load
from efflm.methods import check_for_model, config_from_dict, get

SCHEME = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 64}


def _split(method: str) -> tuple[str, str]:
    name, _, pattern = method.partition(":")
    return name, pattern or "unstructured"


def _label(method: str) -> str:
    name, pattern = _split(method)
    if name in ("gptq", "awq"):
        return f"{name} W4 sym g64"
    return f"{name} {'50%' if pattern == 'unstructured' else pattern}"


def llmc_args(method: str) -> tuple[str, dict]:
    """llm-compressor's side: the modifier and every argument it gets."""
    name, pattern = _split(method)
    if name in ("sparsegpt", "wanda"):
        common = {
            "sparsity": 0.5,
            "mask_structure": "0:0" if pattern == "unstructured" else pattern,
            "sparsity_profile": None,
            "ignore": ["re:.*lm_head"],
        }
        if name == "wanda":
            return "WandaPruningModifier", common
        return "SparseGPTModifier", {
            **common,
            "dampening_frac": 0.01,
            "block_size": 128,
            "preserve_sparsity_mask": False,
        }
    groups = {"g": {"targets": ["Linear"], "weights": SCHEME}}
    if name == "gptq":
        return "GPTQModifier", {
            "config_groups": groups,
            "actorder": "static",
            "dampening_frac": 0.01,
            "block_size": 128,
            "ignore": ["lm_head"],
        }
    return "AWQModifier", {
        "config_groups": groups,
        "duo_scaling": True,
        "n_grid": 20,
        "offload_device": None,
        "ignore": ["lm_head"],
    }


def _llmc_recipe(method: str):
    from llmcompressor.modifiers.awq import AWQModifier
    from llmcompressor.modifiers.pruning import WandaPruningModifier
    from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier
    from llmcompressor.modifiers.quantization import GPTQModifier

    cls, kwargs = llmc_args(method)
    return {
        "WandaPruningModifier": WandaPruningModifier,
        "SparseGPTModifier": SparseGPTModifier,
        "GPTQModifier": GPTQModifier,
        "AWQModifier": AWQModifier,
    }[cls](**kwargs)


def efflm_config(method: str) -> dict:
    """efflm's side, every option written out (the same settings as ``_llmc_recipe``)."""
    name, pattern = _split(method)
    if name in ("sparsegpt", "wanda"):
        extra = {"dampening": 0.01, "block_size": 128, "true_sequential": True} if name == "sparsegpt" else {}
        return {"method": name, "sparsity": 0.5, "pattern": pattern, **extra}
    grid = {"bits": 4, "group_size": 64, "symmetric": True}
    if name == "gptq":
        return {
            "method": "gptq",
            **grid,
            "act_order": True,
            "dampening": 0.01,
            "block_size": 128,
            "true_sequential": True,
        }
    return {"method": "awq", **grid, "duo_scaling": True, "n_grid": 20, "clip": False}


def efflm_runs(method: str) -> list[tuple[str, dict]]:
    """efflm's runs of a method: its default, and for GPTQ/SparseGPT also llm-compressor's
    order (observe the whole layer in batches, solve, forward again) for the same algorithm."""
    cfg = efflm_config(method)
    if "true_sequential" in cfg:
        return [("true sequential (default)", cfg), ("layer order", {**cfg, "true_sequential": False})]
    return [("default", cfg)]


def cpu_pinning_workaround() -> bool:
    """llm-compressor 0.14's AWQ pins its cached activations (``IntermediatesCache.pin_memory``)
    unconditionally, and ``Tensor.pin_memory`` raises without an accelerator. Pinning only speeds
    host-to-device copies, so on a CPU-only machine it is made a no-op; True if it was."""
    if torch.accelerator.is_available():
        return False
    from llmcompressor.pipelines.cache import IntermediatesCache

    IntermediatesCache.pin_memory = lambda self, batch_index: None
    return True


def run_llmcompressor(model_spec: str, method: str, calib: torch.Tensor) -> tuple[torch.nn.Module, float]:
    from datasets import Dataset
    from llmcompressor import oneshot

    model, tok = load(model_spec)
    t0 = time.perf_counter()
    data = Dataset.from_dict({"input_ids": calib.tolist(), "attention_mask": torch.ones_like(calib).tolist()})
    oneshot(
        model=model,
        processor=tok,
        dataset=data,
        recipe=_llmc_recipe(method),
        num_calibration_samples=calib.shape[0],
        max_seq_length=calib.shape[1],
    )
    return model, time.perf_counter() - t0


def run_efflm(model_spec: str, config: dict, calib: torch.Tensor) -> tuple[torch.nn.Module, float]:
    model, _ = load(model_spec)
    t0 = time.perf_counter()
    cfg = config_from_dict(config)
    check_for_model(model.config, cfg)
    model = get(cfg.method).apply(model, cfg, calib)
    return model, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/vs_llmcompressor.py")
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
    for m in [m.strip() for m in a.methods.split(",") if m.strip()]:
        config_from_dict(efflm_config(m))  # bad method names fail before any work
    pinned = cpu_pinning_workaround()
    _, tok = load(a.model)
    calib = text.calibration_windows(tok, a.calib_samples, a.calib_len, seed=0)
    ids = text.eval_tokens(tok, 512 * a.windows)
    rows = []
    for method in [m.strip() for m in a.methods.split(",") if m.strip()]:
        res, failed = {}, {}
        jobs = [(f"efflm {label}", lambda c=cfg: run_efflm(a.model, c, calib)) for label, cfg in efflm_runs(method)]
        jobs.append(("llm-compressor", lambda: run_llmcompressor(a.model, method, calib)))
        for who, fn in jobs:
            try:
                model, secs = fn()
                res[who] = (perplexity(model.eval(), ids, 512, a.windows)["ppl"], secs)
                print(f"{who:35s} {method}: ppl {res[who][0]:.3f}  {res[who][1]:.1f} s", flush=True)
            except (EfflmError, RuntimeError, ValueError, TypeError, AttributeError, OSError) as e:
                failed[who] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
                print(f"{who} {method} failed: {failed[who]}", flush=True)
        ref = res.get("llm-compressor")
        for who, _ in jobs[:-1]:
            ours = res.get(who)
            cells = [
                f"{ours[0]:.3f}" if ours else f"failed ({failed[who]})",
                f"{ref[0]:.3f}" if ref else f"failed ({failed['llm-compressor']})",
                f"{ours[0] / ref[0]:.3f}" if ours and ref else "–",
                f"{ours[1]:.1f}" if ours else "–",
                f"{ref[1]:.1f}" if ref else "–",
                f"{ours[1] / ref[1]:.2f}" if ours and ref else "–",
            ]
            rows.append(f"| {_label(method)} | {who.removeprefix('efflm ')} | " + " | ".join(cells) + " |")
    table = "\n".join(
        [
            f"efflm vs llm-compressor on {a.model}: {a.calib_samples} x {a.calib_len} calibration tokens, "
            f"perplexity over {a.windows} x 512 evaluation tokens, {a.threads} threads. Time: the same scope on both "
            "sides, from the loaded model and calibration ids in memory to the compressed model (efflm: config "
            "validation + apply; llm-compressor: Dataset + oneshot); one run each, efflm's then llm-compressor's per "
            "method. GPTQ and SparseGPT run twice on efflm's side: its default (true sequential: one forward per "
            "layer over the whole calibration batch, each Linear group solved as the forward reaches it) and "
            "llm-compressor's order (the layer observed in batches of 4, solved, then run again).",
            "",
            "| method | efflm run | efflm ppl | llm-compressor ppl | ppl ratio | efflm s | llm-compressor s | time ratio |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "What each side ran:",
            "",
            *[
                f"- {_label(m)}: efflm `{efflm_config(m)}`"
                + (" (layer order: `true_sequential: False`)" if "true_sequential" in efflm_config(m) else "")
                + f"; llm-compressor `{llmc_args(m)[0]}({llmc_args(m)[1]})`"
                for m in [m.strip() for m in a.methods.split(",") if m.strip()]
            ],
            *(
                [
                    "",
                    "No accelerator here: llm-compressor's `IntermediatesCache.pin_memory` (which AWQ calls "
                    "unconditionally and which raises without one) was made a no-op; pinning only speeds "
                    "host-to-device copies.",
                ]
                if pinned
                else []
            ),
            "",
            f"Command: `python benchmarks/vs_llmcompressor.py --model {a.model} --methods {a.methods} "
            f"--calib-samples {a.calib_samples} --calib-len {a.calib_len} --windows {a.windows} --out {a.out}`.",
        ]
    )
    return publish(a.out, table)


if __name__ == "__main__":
    raise SystemExit(main())
