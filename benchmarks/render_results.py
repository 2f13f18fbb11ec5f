"""Build docs/results.md from the committed result files under results/, verbatim.

    python benchmarks/render_results.py [--results results] [--out docs/results.md]

Every table in docs/results.md is a committed result file, embedded as it is, under the
command that regenerates it; the text around the tables holds no numbers of its own. A test
checks the committed docs/results.md equals this script's output.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# (file, heading, the command that regenerates it, what it is for)
SECTIONS = [
    (
        "leaderboard.md",
        "Leaderboard: every method on the default model",
        "efflm bench; efflm bench --suite quant2; efflm bench --suite tasks; efflm bench --suite recover; "
        "efflm bench --recipe F for each benchmarks/recipes/recover_base_*.yaml; efflm leaderboard",
        "One row per recipe, each measured in its own worker process: quality (perplexity) against cost "
        "(bytes, decode tok/s, TTFT, peak RSS). Rows accumulate in the committed results/efflm.sqlite and the "
        "latest row per recipe is shown; only rows of the current measurement version count, and the footer "
        "names the commits the rows were measured at. `--suite recover` rows (a compressed base + LoRA trained "
        "by KD from the dense model) stand beside their unhealed bases. The plot is "
        "[results/pareto.png](../results/pareto.png).",
    ),
    (
        "ci_time.md",
        "How long the README's two commands take",
        "CI=true bash .ci/run (it prints each step's wall time); time make test-fast",
        "`make bench`, `make test` and the rest of CI on a fresh clone, on these 2 cores.",
    ),
    (
        "scale_compress.md",
        "Compression at real models' sizes: layer-streamed, in bounded memory",
        "python benchmarks/scale_checkpoints.py; python benchmarks/scale_compress.py",
        "GPTQ on random-weight checkpoints of TinyLlama-1.1B's, Llama-3.2-3B's and Llama-3.1-8B's shapes, read "
        "one decoder layer at a time; QLoRA on the 8B shape; streamed against whole-model GPTQ on the default "
        "model; the memory model ([docs/scaling.md](scaling.md)) beside each measurement.",
    ),
    (
        "vs_llamacpp.md",
        "Decode speed: efflm vs llama.cpp vs transformers",
        "python benchmarks/vs_llamacpp.py",
        "Same model, prompt, tokens, threads; interleaved rounds; the same 4-bit codes in efflm and in llama.cpp; "
        "efflm's fused decode step against its reference path in the same run; batched decode; where the time goes.",
    ),
    (
        "speculative_speed_bfloat16.md",
        "Speculative decoding",
        "python benchmarks/speculative_speed.py --dtype bfloat16",
        "Plain decoding against fixed and adaptive drafters on a copy-heavy and an open-ended workload; both paths "
        "do the same work.",
    ),
    (
        "kv_policies.md",
        "KV-cache methods",
        "python benchmarks/kv_policies.py",
        "Perplexity through each cache policy, token by token, at equal budgets; then text longer than the cache.",
    ),
    (
        "serve_load.md",
        "Serving: efflm serve vs llama-cpp-python's server",
        "python benchmarks/serve_load.py",
        "Both servers on loopback with 2 threads on the same 4-bit codes, an asyncio SSE client at 1–32 "
        "concurrent streams, greedy; then a burst beyond the queue.",
    ),
    (
        "serve_structured.md",
        "Serving: structured output's cost",
        "python benchmarks/serve_structured.py",
        "The grammar engines (llguidance, which efflm serve uses, and xgrammar) compiling one nested JSON schema "
        "against SmolLM2's tokenizer and computing each step's token mask along a valid document; then efflm's "
        "batcher decoding 8 greedy streams of the 4-bit default model with the schema enforced per row, against "
        "the same streams free.",
    ),
    (
        "serve_prefix.md",
        "Serving: prefix caching",
        "python benchmarks/serve_prefix.py",
        "Eight streams sharing a 1,000-token system prompt, each with its own short question, on the 4-bit default "
        "model in efflm's batcher: time to first token with the prefix cache off and on, and whether the outputs "
        "are the same.",
    ),
    (
        "serve_spec.md",
        "Serving: speculative decoding inside the batch",
        "python benchmarks/serve_spec.py",
        "The 4-bit default model in efflm's batcher with and without a prompt-lookup speculative step, every row's "
        "draft verified in one batched step: output tokens/s at 1 and 8 streams on a rewrite workload (the output "
        "copies the prompt) and an open one, the acceptance rate, and whether the outputs are the same.",
    ),
    (
        "vs_llmcompressor.md",
        "Quantization side by side with llm-compressor",
        "python benchmarks/vs_llmcompressor.py --methods gptq,awq",
        "The same model, calibration windows and evaluation, every option set explicitly on both sides, the same "
        "scope timed.",
    ),
    (
        "vs_llmcompressor_prune.md",
        "Pruning side by side with llm-compressor",
        "python benchmarks/vs_llmcompressor.py --methods sparsegpt,wanda,sparsegpt:2:4,wanda:2:4 "
        "--out results/vs_llmcompressor_prune.md",
        "As above, for the pruners.",
    ),
    (
        "structured_speed.md",
        "Structured pruning's speedup",
        "python benchmarks/structured_speed.py",
        "LLM-Pruner-style pruned models against dense, timed in interleaved rounds.",
    ),
    (
        "smoothquant_alpha.md",
        "SmoothQuant's α, chosen on the development split",
        "python benchmarks/smoothquant_alpha.py",
        "The α the SmoothQuant config defaults to, chosen where it is not reported on.",
    ),
    (
        "vs_peft.md",
        "Fine-tuning side by side with peft",
        "python benchmarks/vs_peft.py",
        "The same base, batches, adapter init (one file loaded by both), schedule, optimizer and threads; "
        "each side in its own process.",
    ),
    (
        "peft_shapes.md",
        "Fine-tuning: the papers' shapes",
        "python benchmarks/peft_shapes.py --study shapes,tasks",
        "DoRA vs LoRA, LoRA-FA's memory, DyLoRA's truncation, prompt tuning and (IA)³ vs LoRA, QLoRA's NF4 base, "
        "and the built-in instruction tasks. 40 steps each; base MB counted after the method's apply (QLoRA's "
        "NF4 base).",
    ),
    (
        "peft_recovery.md",
        "Fine-tuning: LoRA recovery of compressed models",
        "python benchmarks/peft_shapes.py --study recovery",
        "The runs of `efflm bench --suite finetune`: the same LoRA on each compressed base; each run is a "
        "leaderboard row too.",
    ),
    (
        "finetune_memory.md",
        "Full-parameter fine-tuning in inference-sized memory: LOMO, AdaLomo, MeZO vs AdamW and lomo-optim",
        "python benchmarks/finetune_memory.py",
        "Each row its own process on the same model, batches, schedule, threads and loss; only the updater "
        "differs. lomo-optim's Lomo/AdaLomo run in the same loop over the same loss module.",
    ),
    (
        "distill_recovery.md",
        "Distillation: healing compressed models (CE vs KD vs GKD), and LLM-QAT vs GPTQ",
        "python benchmarks/distill_recovery.py --jobs 2 --threads 1 --cache results/distill_recovery_runs.json",
        "The same LoRA on each compressed student, the same batches and steps; the dense model is the teacher. "
        "LLM-QAT trains on the teacher's own data-free text. The sweep takes hours, so its finished runs are "
        "committed in `results/distill_recovery_runs.json`, keyed by the code they ran: on the same code the "
        "command reuses them, on changed code it measures again.",
    ),
    (
        "vs_trl_gkd.md",
        "GKD side by side with trl's GKDTrainer",
        "python benchmarks/vs_trl_gkd.py",
        "The same student, teacher, LoRA, chat rows, steps, λ/β/τ and optimizer; each side in its own process.",
    ),
    (
        "dedup_quality.md",
        "Data: deduplication against planted near-duplicates",
        "python benchmarks/dedup_quality.py",
        "Precision and recall of `efflm data dedup` (exact and MinHash at several thresholds) and of datatrove's "
        "MinHash pipeline on the same real text with planted copies at known edit rates; documents/s and peak RSS, "
        "JSONL in to JSONL out, each row its own process.",
    ),
    (
        "dedup_effect.md",
        "Data: what deduplication does to fine-tuning",
        "python benchmarks/data_effect.py --study dedup",
        "The same LoRA trained on a corpus with repeated documents and on it deduplicated: held-out perplexity and "
        "how much of the repeated documents the model reproduces verbatim.",
    ),
    (
        "selection_effect.md",
        "Data: what selection does to fine-tuning toward a target domain",
        "python benchmarks/data_effect.py --study select --steps 60",
        "The same LoRA trained on 10% of a pool chosen by DSIR, by perplexity, at random, and on the whole pool: "
        "perplexity on held-out text of the target domain (the Sonnets).",
    ),
    (
        "quant_bits.md",
        "Quantization II: perplexity against bits per weight, beside llama.cpp's k-quants",
        "python benchmarks/quant_bits.py --extra-text 'GNU GPL v3=/usr/share/common-licenses/GPL-3'",
        "Every quantizer at 2, 3, 4 and 8 bits (RTN, GPTQ, AWQ, SqueezeLLM, QuIP, SpQR, ZeroQuant, ZeroQuant-FP, "
        "LLM.int8(), W8A8, SmoothQuant) and llama.cpp's own k-quants of the same model, on the same token ids; "
        "bits per weight count every stored byte (plot: results/quant_bits.png). A second text, the GNU GPL v3 "
        "(legal prose outside the Shakespeare splits), has its own columns, so no method is judged only on the "
        "split its calibration came from.",
    ),
    (
        "gguf_exports.md",
        "Exports: every GGUF block type, efflm's codes beside llama.cpp's own quantization",
        "python benchmarks/gguf_exports.py",
        "GPTQ at each grid that is a llama.cpp block type (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), written with the codes "
        "unchanged, against llama.cpp's `llama_model_quantize` of the same dense model to the same type: bytes, "
        "perplexity in efflm and in llama.cpp on the same token ids, llama.cpp's decode speed. SmolLM2's float "
        "weights are a dequantized Q4_1 file, so both Q4_1 rows give back its own grid (the same perplexity) and "
        "prove nothing about Q4_1; 5-bit grids do not contain those weights, which is why llama.cpp's Q5 rows score "
        "worse than its Q4_1. K-quant rows (Q4_K, Q5_K, Q6_K): GPTQ on the K-quant's super-block lattice where a "
        "Linear's input width is a multiple of 256 (on SmolLM2 only down_proj) and llama.cpp's fallback type "
        "elsewhere, beside llama.cpp's pure quantization to the same types.",
    ),
    (
        "ct_exports.md",
        "Exports: every compressed-tensors scheme, in efflm and in transformers",
        "python benchmarks/ct_exports.py",
        "W4A16 (symmetric, and asymmetric with integer zero points), W8A16, W8A8 INT8 (SmoothQuant), FP8 W8A8 "
        "(ZeroQuant-FP E4M3) and MXFP4 weights, each written by the compressed-tensors library and loaded back by "
        "plain transformers: bytes, perplexity in efflm and in transformers on the same token ids, and "
        "transformers' CPU decode speed (it decompresses on load, so its speed is the dense model's).",
    ),
    (
        "families.md",
        "Model families at real members' shapes: compress cost and decode speed",
        "python benchmarks/families.py",
        "Random-weight checkpoints at Qwen3-0.6B's, Gemma-3-1B's, Phi-3-mini's and Mixtral-8x7B's widths (6 decoder "
        "layers; Mixtral 2), SmolLM2's vocabulary: each method family's `efflm compress` wall time and peak RSS, and "
        "greedy decode speed of the result on efflm's fused C step and on its reference path (the C column says why "
        "not where the fused step does not apply). Costs only: random weights have no quality to report.",
    ),
    (
        "prompt_compression.md",
        "Data: prompt compression on pass-key retrieval",
        "python benchmarks/prompt_compression.py",
        "Selective Context, LLMLingua and truncation at 2/4/8× on real text with a planted pass key: accuracy, "
        "the TTFT each saves and what compressing costs, and accuracy by the key's depth.",
    ),
    (
        "icl_demos.md",
        "Data: in-context demonstrations (KATE, contextual calibration)",
        "python benchmarks/icl_demos.py",
        "k-shot accuracy on which play a passage comes from: random vs KATE demonstrations, with and without "
        "contextual calibration.",
    ),
    (
        "gpu_sparse24.md",
        "GPU: 2:4 semi-structured sparsity (CUDA)",
        "python3 benchmarks/gpu_sparse24.py",
        "Needs a CUDA GPU; not re-measured when no GPU was lent (its first line names the GPU and torch it ran on).",
    ),
]


def render(results: Path) -> str:
    out = [
        "# Results",
        "",
        "Every table below is a committed file under `results/`, embedded verbatim by "
        "`python benchmarks/render_results.py`, under the command that regenerates it (`make reference` runs "
        "them all). Numbers from a shared 2-core machine vary by about ±15% between runs: compare rows of one "
        "file, which were measured in one run.",
        "",
    ]
    for name, heading, command, what in SECTIONS:
        path = results / name
        out += [f"## {heading}", "", f"`{command}` → [results/{name}](../results/{name}). {what}", ""]
        if path.is_file():
            body = path.read_text(encoding="utf-8").strip().splitlines()
            if body and body[0].startswith("# "):
                body = body[1:]  # the section heading stands in for the file's own title
            out += [*[("#" + line if line.startswith("#") else line) for line in body], ""]
        else:
            out += ["(not measured yet)", ""]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/render_results.py")
    p.add_argument("--results", default="results")
    p.add_argument("--out", default="docs/results.md")
    a = p.parse_args(argv)
    from efflm.core.atomic import atomic_write_text

    atomic_write_text(Path(a.out), render(Path(a.results)))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
