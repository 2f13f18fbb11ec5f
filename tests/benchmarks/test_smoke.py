"""Every script under benchmarks/ runs end to end on tiny-llama in seconds, so none can rot.

Each writes its table to a temporary file; the test checks the table is there and holds a
row per thing measured (numbers from tiny-llama mean nothing and are not checked).
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2] / "benchmarks"


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run(name: str, args: list[str], tmp_path: Path) -> str:
    out = tmp_path / f"{name}.md"
    assert script(name).main(["--model", "tiny-llama", "--threads", "1", *args, "--out", str(out)]) == 0
    return out.read_text()


def test_every_benchmark_script_has_a_smoke_test():
    tested = {
        "vs_llamacpp",
        "scale_checkpoints",
        "scale_compress",
        "vs_llmcompressor",
        "speculative_speed",
        "kv_policies",
        "structured_speed",
        "smoothquant_alpha",
        "gpu_sparse24",
        "render_results",
        "render_docs",  # tests/core/test_fields.py, tests/core/test_settings.py, tests/test_architecture_doc.py
        "vs_peft",
        "peft_shapes",
        "serve_load",
        "finetune_memory",
        "distill_recovery",
        "vs_trl_gkd",
        "dedup_quality",
        "prompt_compression",
        "icl_demos",
        "data_effect",
        "quant_bits",
        "gguf_exports",
        "families",
        "ct_exports",
        "serve_structured",
        "serve_prefix",
        "serve_spec",
    }
    assert {p.stem for p in ROOT.glob("*.py")} - {"__init__"} == tested


def test_vs_llamacpp(tmp_path):
    md = run("vs_llamacpp", ["--prompt-len", "16", "--new-tokens", "4", "--rounds", "1", "--batches", "1,2"], tmp_path)
    assert "efflm packed 4-bit" in md and "transformers generate fp32" in md
    assert "reference path" in md and "| batch 1 | batch 2 |" in md and "fused C step" in md
    assert "no GGUF source" in md  # tiny-llama has no GGUF file: no llama.cpp rows, said so


def test_speculative_speed(tmp_path):
    md = run(
        "speculative_speed",
        ["--new-tokens", "6", "--rounds", "1", "--dtype", "float32", "--draft-layers", "1"],
        tmp_path,
    )
    assert md.count("| rewrite |") == 7 and md.count("| open |") == 7
    assert "| NO |" not in md  # fp32: every speculative output equals plain decoding


def test_kv_policies(tmp_path):
    md = run(
        "kv_policies",
        ["--len", "64", "--long", "96", "--window", "32", "--prefill", "8", "--dtype", "float32"],
        tmp_path,
    )
    assert "H2O 20%" in md and "StreamingLLM 32 slots" in md


def test_structured_speed(tmp_path):
    md = run("structured_speed", ["--ratios", "0.25", "--rounds", "1"], tmp_path)
    assert "llm_pruner ratio 0.25" in md


def test_smoothquant_alpha(tmp_path):
    md = run("smoothquant_alpha", ["--alphas", "0.4,0.6", "--windows", "2", "--seq-len", "32"], tmp_path)
    assert md.count("chosen") == 1 and "| 0.40 |" in md and "| 0.60 |" in md


def test_vs_llmcompressor_efflm_side_without_the_anchor(tmp_path):
    mod = script("vs_llmcompressor")
    calib = torch.randint(3, 250, (2, 64), generator=torch.Generator().manual_seed(0))
    for method in ("gptq", "awq", "sparsegpt", "wanda:2:4"):
        cfg = mod.efflm_config(method)
        assert cfg["method"] == method.split(":")[0]
        runs = mod.efflm_runs(method)
        assert len(runs) == (2 if method in ("gptq", "sparsegpt") else 1) and runs[0][1] == cfg
        for _, config in runs:
            model, secs = mod.run_efflm("tiny-llama", config, calib)
            assert secs > 0 and model is not None
        assert mod.llmc_args(method)[0].endswith("Modifier")


def test_vs_llmcompressor_full(tmp_path):
    pytest.importorskip("llmcompressor")
    md = run(
        "vs_llmcompressor",
        ["--methods", "wanda,gptq", "--calib-samples", "2", "--calib-len", "64", "--windows", "1"],
        tmp_path,
    )
    assert "| wanda 50% | default |" in md and "What each side ran" in md
    assert "| gptq W4 sym g64 | true sequential (default) |" in md and "| gptq W4 sym g64 | layer order |" in md
    assert "llm-compressor `GPTQModifier({" in md and "{llmc_args" not in md


def test_gpu_sparse24_shapes_and_cpu_refusal(tmp_path):
    mod = script("gpu_sparse24")
    shapes = mod.model_shapes("tiny-llama")
    assert len(shapes) == 7 and all(o > 0 and i > 0 for o, i in shapes.values())
    w = mod.mask_2_4(torch.randn(8, 16, dtype=torch.float16))
    assert mod.is_2_4(w) and not mod.is_2_4(torch.ones(8, 16))
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the refusal path is not taken")
    out = tmp_path / "gpu.md"
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        mod.main(["--model", "tiny-llama", "--out", str(out)])
    assert not out.exists()


def test_results_doc_is_the_render_of_the_committed_result_files():
    mod = script("render_results")
    root = ROOT.parent
    assert (root / "docs" / "results.md").read_text() == mod.render(root / "results")
    named = {name for name, *_ in mod.SECTIONS}
    assert {p.name for p in (root / "results").glob("*.md")} <= named  # no result file left out


def test_vs_peft(tmp_path):
    pytest.importorskip("peft")
    md = run(
        "vs_peft",
        [
            "--steps",
            "2",
            "--batch",
            "2",
            "--seq-len",
            "64",
            "--eval-windows",
            "1",
            "--methods",
            "lora,prompt_tuning,qlora",
        ],
        tmp_path,
    )
    assert md.count("| efflm |") == 3 and md.count("| peft |") == 3
    rows = [r.split("|") for r in md.splitlines() if r.startswith("| lora |")]
    assert rows[0][7] == rows[1][7]  # same init, data and schedule: the same final loss on both sides


def test_peft_shapes(tmp_path):
    db = str(tmp_path / "r.sqlite")
    only = "lora r=8,qlora r=8,dylora r=8,sparsegpt 50%"
    args = ["--steps", "1", "--recovery-steps", "1", "--task-steps", "1", "--batch", "2", "--seq-len", "256"]
    md = run("peft_shapes", [*args, "--db", db, "--only", only, "--recovery-out", str(tmp_path / "rec.md")], tmp_path)
    md += (tmp_path / "rec.md").read_text()
    assert "| lora r=8 |" in md and "| qlora r=8 |" in md and "QLoRA: base" in md
    assert md.count("| 4 |") == 1 and "| sparsegpt 50% |" in md and "| + LoRA r=8 |" in md


def test_finetune_memory(tmp_path):
    rows = "inference,adamw,lomo,adalomo,mezo"
    if importlib.util.find_spec("lomo_optim"):
        rows += ",lomo_optim_lomo,lomo_optim_adalomo"
    md = run("finetune_memory", ["--steps", "2", "--batch", "2", "--seq-len", "32", "--rows", rows], tmp_path)
    assert "| efflm lomo (no clipping) |" in md and "| efflm mezo (all weights) |" in md
    assert "| MeZO peak ≤ 1.1× inference |" in md and "| lomo peak ≤ 0.5× AdamW |" in md


def test_distill_recovery(tmp_path):
    args = ["--steps", "2", "--students", "gptq W3 g64", "--qat-rows", "2", "--qat-bits", "3", "--jobs", "2"]
    md = run("distill_recovery", args, tmp_path)
    assert "| gptq W3 g64 |" in md and "| W3 |" in md and "Paper shapes" in md
    assert md.count("| gptq W3 g64 |") == 2 and "generation KL to the teacher" in md


def test_distill_recovery_cache_reuses_runs_only_on_the_same_clean_code(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from efflm.bench import run_cache

    mod = script("distill_recovery")
    args = SimpleNamespace(cache=str(tmp_path / "runs.json"), model="m", steps=3, qat_rows=0)
    calls, scripts = [], []
    compute = lambda: calls.append(1) or {"ppl": float(len(calls))}  # noqa: E731

    def version(v):
        monkeypatch.setattr(run_cache, "code_version", lambda script=None: scripts.append(script) or v)

    version("abc123")
    assert mod.cached(args, "s|CE", compute) == {"ppl": 1.0}
    assert mod.cached(args, "s|CE", compute) == {"ppl": 1.0} and len(calls) == 1  # reused
    assert scripts[-1].endswith("distill_recovery.py")  # the benchmark script is part of the code
    version("def456")
    assert mod.cached(args, "s|CE", compute) == {"ppl": 2.0}  # other code measures again
    version("def456-dirty")
    assert mod.cached(args, "s|CE", compute) == {"ppl": 3.0}  # a dirty tree never reuses
    assert mod.cached(args, "s|CE", compute) == {"ppl": 4.0}


def test_vs_trl_gkd_efflm_side(tmp_path):
    from types import SimpleNamespace

    from efflm.models.tiny import tiny_tokenizer

    mod = script("vs_trl_gkd")
    data = tmp_path / "rows.jsonl"
    mod.rows_file(tiny_tokenizer(), data, 8)
    r = mod.run_efflm(SimpleNamespace(model="tiny-llama", steps=2), data)
    assert r["ppl"] > 0 and 0 <= r["task_acc"] <= 1 and len(r["losses"]) == 2
    assert r["on_policy"] == 1  # efflm's λ 0.5 draws at seed 0: step 0 on-policy, step 1 not


def test_dedup_quality(tmp_path):
    out = tmp_path / "dq.md"
    rows = "exact,minhash_0.8,minhash_dt,datatrove"
    assert script("dedup_quality").main(["--docs", "40", "--rounds", "1", "--rows", rows, "--out", str(out)]) == 0
    table = out.read_text()
    for row in rows.split(",")[:3]:  # datatrove is an optional anchor
        assert f"| {row} |" in table
    assert '"precision"' in (tmp_path / "dq.json").read_text()


def test_prompt_compression(tmp_path):
    table = run("prompt_compression", ["--haystacks", "1", "--paragraphs", "2", "--ratios", "2"], tmp_path)
    for row in ("| none | 1× |", "| truncate | 2× |", "| selective_context | 2× |", "| llmlingua | 2× |"):
        assert row in table
    assert "| llmlingua 2× |" in table  # the depth table


def test_icl_demos(tmp_path):
    table = run("icl_demos", ["--per-label", "1", "--ks", "0,1"], tmp_path)
    assert "| 0 | — | no |" in table and "| 1 | KATE | yes |" in table and "| 1 | random | no |" in table


def test_data_effect_dedup(tmp_path):
    table = run("data_effect", ["--study", "dedup", "--steps", "2", "--docs", "12", "--repeated", "2", "--copies", "3"],
                tmp_path)  # fmt: skip
    assert "| trained on the repeated corpus | 16 |" in table and "| trained on it deduplicated | 12 |" in table


def test_data_effect_select(tmp_path):
    table = run("data_effect", ["--study", "select", "--steps", "2", "--pool-limit", "40"], tmp_path)
    for row in ("| whole pool (100%) | 40 |", "| random 10% | 4 |", "| DSIR 10%", "| perplexity filter 10%",
                "| all problems (100%) | 40 |", "| IFD 10% (highest) | 4 |"):  # fmt: skip
        assert row in table


def test_quant_bits(tmp_path):
    only = "rtn W4 g64,squeezellm 3-bit dense-only,zeroquant_fp W4A8 (FP4 + FP8 e4m3),llm_int8 (threshold 6)"
    extra = tmp_path / "other.txt"
    extra.write_text("A second text, scored by every quantized model beside the first. " * 20)
    md = run("quant_bits", ["--windows", "1", "--seq-len", "32", "--only", only, "--extra-text", f"other={extra}"],
             tmp_path)  # fmt: skip
    for label in [*only.split(","), "dense (fp32 linears)"]:
        assert f"| {label} | efflm |" in md
    assert "| ppl (other) | Δ (other) |" in md and "| dense (fp32 linears) | efflm |" in md
    rows = json.loads((tmp_path / "quant_bits.json").read_text())
    assert all(r["extra_ppl"]["other"] > 1 and r["extra_ppl"]["other"] != r["ppl"] for r in rows)
    assert "no llama.cpp rows" in md  # tiny-llama has no GGUF source
    assert (tmp_path / "quant_bits.png").is_file() and (tmp_path / "quant_bits.json").is_file()


@pytest.mark.engines
def test_gguf_exports(tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make test`")
    from tests.io.test_gguf_vocab import PRE, hf_model, trained

    tok = trained(PRE["gpt-2"]())  # a Hugging Face directory with merges: llama.cpp can load its tokenizer
    hf_model("tiny-llama", tok).save_pretrained(tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")
    args = ["--model", str(tmp_path / "hf"), "--method", "rtn", "--windows", "1", "--seq-len", "32"]
    md = run("gguf_exports", [*args, "--rounds", "1", "--new", "4"], tmp_path)
    for name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"):
        assert f"| {name} | efflm rtn |" in md and f"| {name} | llama.cpp quantize |" in md
    assert "| Q4_K | efflm rtn | Q5_0 ×" in md  # tiny-llama: no input 256 wide, the fallback everywhere
    assert "| F16 | dense export |" in md


def test_ct_exports(tmp_path):
    pytest.importorskip("compressed_tensors")
    md = run("ct_exports", ["--windows", "1", "--seq-len", "32", "--rounds", "1", "--new", "2"], tmp_path)
    for scheme in (
        "W4A16",
        "W4A16 asym",
        "W8A16",
        "W8A8 INT8",
        "FP8 W8A8",
        "MXFP4 A16",
        "NVFP4 A16",
        "mixed W8A8 attention + W4A16 MLP",
    ):
        assert f"| {scheme} |" in md
    assert (
        "| W4A16 asym | gptq | pack-quantized |" in md and "| MXFP4 A16 | zeroquant_fp | mxfp4-pack-quantized |" in md
    )


def test_recover_base_recipes_are_the_recover_suites_bases():
    """``make reference`` benchmarks each compressed base of ``--suite recover`` alone from these
    files (the dense-trained LLM-Pruner base is already a default-suite row), so the leaderboard
    shows every healed model beside its unhealed base; they must not drift from the suite."""
    from efflm.bench.suites import default_suite, recover_suite
    from efflm.core import recipe as recipes

    files = sorted((ROOT / "recipes").glob("recover_base_*.yaml"))
    labels = {recipes.label(recipes.from_yaml(p.read_text())) for p in files}
    default = {recipes.label(r) for r in default_suite()}
    bases = {recipes.label(r) for r in recover_suite()}
    assert len(labels) == len(files) and not labels & default
    assert labels | (bases & default) == bases


@pytest.mark.benchmarks
def test_scale_compress(tmp_path, monkeypatch):
    import sys

    monkeypatch.syspath_prepend(str(ROOT))
    import scale_checkpoints

    shape = dict(vocab_size=49152, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                 rms_norm_eps=1e-5, tie_word_embeddings=False)  # fmt: skip
    monkeypatch.setitem(scale_checkpoints.SHAPES, "tiny-test", shape)
    path = scale_checkpoints.write_checkpoint("tiny-test", tmp_path)
    out = tmp_path / "scale.md"
    args = ["--models", "tiny-test", "--whole", "tiny-test", "--qlora", "tiny-test", "--default-model", str(path)]
    assert (
        script("scale_compress").main([*args, "--rounds", "1", "--checkpoints", str(tmp_path), "--out", str(out)]) == 0
    )
    md = out.read_text()
    assert md.count("| tiny-test |") == 3  # whole, streamed, qlora
    assert "| streamed |" in md and "Streamed / whole wall time" in md and "70B" in md
    assert "failed" not in md
    assert "scale_checkpoints" in sys.modules


@pytest.mark.benchmarks
def test_families(tmp_path, monkeypatch):
    fam = script("families")
    small = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=32)
    monkeypatch.setattr(fam, "SHAPES", {
        "qwen3-tiny": dict(model_type="qwen3", tie_word_embeddings=True, **small),
        "mixtral-tiny": dict(model_type="mixtral", num_local_experts=4, num_experts_per_tok=2, layers=2, **small),
    })  # fmt: skip
    out = tmp_path / "families.md"
    args = ["--methods", "rtn", "--layers", "2", "--rounds", "1", "--new", "4", "--threads", "1"]
    assert fam.main([*args, "--checkpoints", str(tmp_path / "ckpt"), "--out", str(out)]) == 0
    md = out.read_text()
    for name in ("qwen3-tiny", "mixtral-tiny"):
        assert f"| {name} | 2 | dense |" in md and f"| {name} | 2 | rtn |" in md
    assert "mixture-of-experts" in md  # why the C step does not apply
    assert json.loads(out.with_suffix(".json").read_text())[0]["family"] == "qwen3-tiny"
