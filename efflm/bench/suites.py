"""Benchmark suites: lists of recipes. ``default`` is what ``make bench`` runs (< 10 min on 2 cores).

The default model's weights are a dequantized Q4_1 file (asymmetric 4-bit, groups of 32),
so its suites avoid that exact grid: asymmetric g32 4-bit re-quantization is lossless on it.
"""

from __future__ import annotations

from efflm.core.recipe import Recipe
from efflm.methods import config_from_dict, methods


def _r(*steps: dict) -> Recipe:
    return [config_from_dict(s) for s in steps]


def default_suite() -> list[Recipe]:
    """Dense fp32/bf16; packed W8 and W4 through the CPU kernels; RTN vs GPTQ at 3 bits (int4
    kernel); SmoothQuant W8A8; one row each of unstructured pruning, structured pruning and
    low-rank. AWQ and naive W8A8 moved to the full suite to keep this one under 10 minutes."""
    bf16 = {"method": "dense", "dtype": "bfloat16"}
    return [
        _r({"method": "dense", "dtype": "float32"}),
        _r(bf16),
        _r({"method": "rtn", "bits": 8, "group_size": -1}, bf16),  # int8 kernel
        _r({"method": "rtn", "bits": 4, "group_size": 64}, bf16),  # int4 kernel
        _r({"method": "rtn", "bits": 3, "group_size": 64}, bf16),
        _r({"method": "gptq", "bits": 3, "group_size": 64}, bf16),
        _r({"method": "smoothquant", "alpha": 0.7}),
        _r({"method": "wanda", "sparsity": 0.5}),  # prune: unstructured
        _r({"method": "llm_pruner", "ratio": 0.34}),  # prune: structured, ~20% of all parameters
        _r({"method": "fwsvd", "ratio": 0.2}),  # low-rank
    ]


def prune_suite() -> list[Recipe]:
    """Issue rows of the prune and low-rank families: magnitude / Wanda / SparseGPT at 50% and 2:4,
    the joint 50% + 4-bit recipes, structured pruning at ~20% and ~35% of parameters, and
    SVD / FWSVD / LoSparse at 10/20/30% of the decoder Linears' parameters."""
    rows = [_r({"method": "dense", "dtype": "float32"})]
    rows += [
        _r({"method": m, "pattern": p}) for m in ("magnitude", "wanda", "sparsegpt") for p in ("unstructured", "2:4")
    ]
    rows += [
        _r({"method": "sparsegpt"}, {"method": "gptq", "bits": 4, "group_size": 64}),
        _r({"method": "wanda"}, {"method": "rtn", "bits": 4, "group_size": 64}),
    ]
    rows += [_r({"method": "llm_pruner", "ratio": r}) for r in (0.34, 0.59)]
    rows += [_r({"method": "llm_pruner", "ratio": 0.25, "head_ratio": 0.333})]
    rows += [_r({"method": m, "ratio": r}) for m in ("svd", "fwsvd", "losparse") for r in (0.1, 0.2, 0.3)]
    return rows


def inference_suite() -> list[Recipe]:
    """The decode path's methods on the bf16 model: the fast packed 4-bit model (efflm's q4/q8
    kernels), the int8 KV cache, H2O and StreamingLLM at 20% and 50% of the 512-token evaluation
    windows (scored token by token through the cache) against a sliding window without sinks,
    and speculative decoding by prompt lookup and by the model's own first 8 layers."""
    bf16 = {"method": "dense", "dtype": "bfloat16"}
    rows = [
        _r(bf16),
        _r({"method": "rtn", "bits": 4, "group_size": 32}, {"method": "int8_embeddings"}, bf16),
        _r(bf16, {"method": "kv_int8"}),
    ]
    for frac, budget in ((0.5, 256), (0.2, 103)):
        rows += [
            _r(bf16, {"method": "h2o", "budget": frac}),
            _r(bf16, {"method": "streaming_llm", "budget": budget, "sinks": 4}),
            _r(bf16, {"method": "streaming_llm", "budget": budget, "sinks": 0}),
        ]
    rows += [
        _r(bf16, {"method": "speculative", "draft": "prompt_lookup"}),
        _r(bf16, {"method": "speculative", "draft": "layers", "draft_layers": 8}),
    ]
    return rows


def extra_suite() -> list[Recipe]:
    """The quantization rows that left the default suite to keep `make bench` under 10 minutes:
    AWQ at 3 bits (the 3-bit comparison with RTN and GPTQ) and naive W8A8 (SmoothQuant's baseline)."""
    return [
        _r({"method": "awq", "bits": 3, "group_size": 64, "n_grid": 10}, {"method": "dense", "dtype": "bfloat16"}),
        _r({"method": "w8a8"}),
    ]


def full_suite() -> list[Recipe]:
    """The default, extra, prune and inference suites, the paper-shape rows, and every registered method at
    its default config (each recipe once)."""
    suite = (
        default_suite()
        + extra_suite()
        + prune_suite()
        + inference_suite()
        + [_r({"method": "rtn", "bits": b, "group_size": 64}) for b in (8, 4, 3)]
        + [_r({"method": m, "bits": b, "group_size": 64}) for m in ("gptq", "awq") for b in (4, 3)]
    )
    suite += [
        [m.config_cls()] for m in methods() if m.family not in ("finetune", "distill", "data")
    ]  # train / not a model
    seen, out = set(), []
    for r in suite:
        key = tuple(c.label() for c in r)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def finetune_suite() -> list[Recipe]:
    """The compressed bases LoRA recovers (`efflm bench --suite finetune` trains the same LoRA on each
    with ``efflm finetune``; every run is a row): dense, LLM-Pruner −20%, SparseGPT 50%, GPTQ W3 g64,
    LoSparse −10% of the decoder Linears' parameters."""
    return [
        _r({"method": "dense", "dtype": "float32"}),
        _r({"method": "llm_pruner", "ratio": 0.34}),
        _r({"method": "sparsegpt", "sparsity": 0.5}),
        _r({"method": "gptq", "bits": 3, "group_size": 64}),
        _r({"method": "losparse", "ratio": 0.1}),
    ]


def recover_suite() -> list[Recipe]:
    """The compressed bases distillation heals (`efflm bench --suite recover` trains the same LoRA on
    each with ``efflm finetune`` by KD from the dense model; every run is a row): the finetune
    suite's compressed bases."""
    return finetune_suite()[1:]


def quant2_suite() -> list[Recipe]:
    """Quantization II on the leaderboard (bytes, decode tok/s and peak memory beside perplexity,
    so the Pareto plot shows what each costs to run): SqueezeLLM 3/4-bit, QuIP and GPTQ at 2 bits,
    SpQR 3-bit, ZeroQuant W4A8 with LKD and W8A8, ZeroQuant-FP W4A8, LLM.int8(). Perplexity
    against bits per weight, with llama.cpp's k-quants, is ``benchmarks/quant_bits.py``."""
    g64 = {"group_size": 64}
    return [
        _r({"method": "squeezellm", "bits": 3}),
        _r({"method": "squeezellm", "bits": 4}),
        _r({"method": "quip", "bits": 2, **g64}),
        _r({"method": "gptq", "bits": 2, **g64}),
        _r({"method": "spqr", "bits": 3}),
        _r({"method": "zeroquant", "bits": 4, **g64, "act_bits": 8}),
        _r({"method": "zeroquant", "bits": 8, **g64, "act_bits": 8, "lkd_steps": 0}),
        _r({"method": "zeroquant_fp"}),
        _r({"method": "llm_int8"}),
    ]


TASKS_SUITE_TASKS = "efflm_cloze,efflm_nextline"


def tasks_suite() -> list[Recipe]:
    """Task accuracy beside perplexity (``efflm bench --suite tasks`` scores every row on
    ``TASKS_SUITE_TASKS``, ~5 minutes a row on 2 cores, so it is not in the default suite): dense,
    the 8/4/3-bit rows, unstructured and structured pruning — the cases where the papers ("Do
    Emergent Abilities Exist in Quantized LLMs", the pruning papers' zero-shot tables) report
    task accuracy falling later or sooner than perplexity."""
    d = default_suite()
    return [d[0], d[2], d[3], d[4], d[5], d[7], d[8]]


SUITES = {
    "default": default_suite,
    "extra": extra_suite,
    "prune": prune_suite,
    "inference": inference_suite,
    "full": full_suite,
    "finetune": finetune_suite,
    "recover": recover_suite,
    "quant2": quant2_suite,
    "tasks": tasks_suite,
}
