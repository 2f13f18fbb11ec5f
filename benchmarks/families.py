"""Model families at real members' shapes: what each method family costs and how fast the result
decodes, on random-weight checkpoints of Qwen3-0.6B's, Gemma-3-1B's, Phi-3-mini's and a 2-layer
Mixtral-8x7B's shapes.

    python benchmarks/families.py [--families qwen3-0.6b,gemma-3-1b,phi-3-mini,mixtral-2l]
        [--layers 6] [--methods rtn,gptq,wanda,svd] [--rounds 3] [--new 32] [--threads 2]

Each checkpoint has the real member's widths (hidden, heads, head_dim, intermediate, experts,
windows) and its transformers class, with ``--layers`` decoder layers (Mixtral: 2) and SmolLM2's
49152-token vocabulary; weights N(0, 0.02) in bf16, norms at their class's init, written once
under ``<efflm cache>/families/``. Every compression is one ``efflm compress`` process (wall time
and its own peak RSS from ``os.wait4``); each result (and the dense model) is then loaded and
decoded greedily at batch 1 — a 16-token prompt, ``--new`` tokens — on efflm's fused C step and
on its reference torch path, the two interleaved ``--rounds`` times (median tok/s); the C column
says why not where the fused step does not apply (``Engine.fast_off``). Random weights: no
quality column. Writes ``results/families.md`` (``--out``) and the rows as JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
VOCAB = 49152

# real members' config.json fields (vocabulary and depth replaced as the docstring says)
SHAPES: dict[str, dict] = {
    "qwen3-0.6b": dict(model_type="qwen3", hidden_size=1024, intermediate_size=3072, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, rope_theta=1e6, rms_norm_eps=1e-6,
                       tie_word_embeddings=True),
    "gemma-3-1b": dict(model_type="gemma3_text", hidden_size=1152, intermediate_size=6912, num_attention_heads=4,
                       num_key_value_heads=1, head_dim=256, sliding_window=512, query_pre_attn_scalar=256,
                       rms_norm_eps=1e-6, tie_word_embeddings=True, swa_period=6),
    "phi-3-mini": dict(model_type="phi3", hidden_size=3072, intermediate_size=8192, num_attention_heads=32,
                       num_key_value_heads=32, rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
    "mixtral-2l": dict(model_type="mixtral", hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                       num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2, rope_theta=1e6,
                       rms_norm_eps=1e-5, tie_word_embeddings=False, layers=2,
                       skip={"svd": "whole-model method: the fp32 model (12.6 GB) and its unstacking exceed 23 GB"}),
}  # fmt: skip
RECIPES = {
    "rtn": "method: rtn\nbits: 4\ngroup_size: 128\n",
    "gptq": "method: gptq\nbits: 4\ngroup_size: 128\n",
    "wanda": "method: wanda\nsparsity: 0.5\n",
    "svd": "method: svd\n",
}


def hf_config(name: str, layers: int):
    from transformers import AutoConfig

    kw = dict(SHAPES[name])
    kw.pop("skip", None)
    model_type, period = kw.pop("model_type"), kw.pop("swa_period", 0)
    n = kw.pop("layers", layers)
    if period:  # Gemma 3: five sliding-window layers, then one global
        kw["layer_types"] = ["full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in range(n)]
    return AutoConfig.for_model(model_type, vocab_size=VOCAB, num_hidden_layers=n, max_position_embeddings=4096,
                                bos_token_id=1, eos_token_id=2, pad_token_id=2, **kw)  # fmt: skip


def write_checkpoint(name: str, layers: int, root: Path) -> Path:
    """The family's checkpoint directory (written once; bf16 safetensors and SmolLM2's tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM

    from efflm.core.atomic import atomic_dir
    from efflm.models.sources import load_tokenizer

    cfg = hf_config(name, layers)
    out = root / f"{name}-{cfg.num_hidden_layers}l"
    if (out / "config.json").is_file():
        return out
    with torch.random.fork_rng(), atomic_dir(out) as tmp:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
        for p in model.parameters():
            if p.ndim > 1:
                p.data.normal_(0.0, 0.02)
        model.save_pretrained(tmp)
        load_tokenizer("smollm2-135m").save_pretrained(tmp)
    return out


def compress(path: Path, method: str, tmp: Path) -> dict:
    from scale_compress import EFFLM, run

    recipe = tmp / f"{method}.yaml"
    recipe.write_text(RECIPES[method])
    out = tmp / f"{path.name}-{method}"
    r = run([*EFFLM, "compress", "--model", str(path), "--recipe", str(recipe), "--out", str(out),
             "--calib-samples", "8", "--calib-len", "512"], {"EFFLM_PROGRESS": "0"})  # fmt: skip
    r["bytes"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file() and f.suffix == ".safetensors")
    r["out"] = out
    return r


def decode(spec: str, rounds: int, new: int) -> dict:
    """Greedy batch-1 tok/s on the fused C step and the reference path (interleaved; median), and
    why the C step does not apply where it does not."""
    import torch

    from efflm.inference.engine import Engine
    from efflm.io.load import load
    from efflm.methods import config_from_dict, get

    model, _ = load(spec, torch.bfloat16)  # a float checkpoint straight to bf16; a compressed one as stored
    model = get("dense").apply(model, config_from_dict({"method": "dense", "dtype": "bfloat16"}))  # a no-op on results
    prompt = torch.randint(3, VOCAB, (1, 16), generator=torch.Generator().manual_seed(0))
    engines = {"c": Engine(model, fast=True), "torch": Engine(model, fast=False)}
    why = engines["c"].fast_off if engines["c"].fast is None else ""
    if why:
        del engines["c"]
    times: dict[str, list[float]] = {k: [] for k in engines}

    @torch.inference_mode()
    def once(engine: Engine, n: int) -> float:
        engine.start(1, 16 + n)
        tok = engine.step(prompt)[:, -1].argmax(-1, keepdim=True)
        t0 = time.perf_counter()
        for _ in range(n - 1):
            tok = engine.step(tok)[:, -1].argmax(-1, keepdim=True)
        return (n - 1) / (time.perf_counter() - t0)

    for engine in engines.values():
        once(engine, 4)  # warm-up
    for _ in range(rounds):
        for k, engine in engines.items():
            times[k].append(once(engine, new))
    out = {k: statistics.median(v) for k, v in times.items()}
    out["why"] = why
    del model, engines
    return out


def decode_apart(spec: str, a) -> dict:
    """``decode`` in a process of its own: this process never holds a model, so each ``efflm
    compress`` it starts inherits no pages (Linux carries a forked child's peak RSS across exec)."""
    from scale_compress import run

    cmd = [sys.executable, __file__, "--decode", spec, "--rounds", str(a.rounds), "--new", str(a.new),
           "--threads", str(a.threads)]  # fmt: skip
    return json.loads(run(cmd, {"EFFLM_PROGRESS": "0"})["stdout"].strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    import torch

    from efflm.core.paths import cache_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default=",".join(SHAPES))
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--methods", default=",".join(RECIPES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoints", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "families.md")
    ap.add_argument("--decode", default=None, help=argparse.SUPPRESS)  # one model's decode rows, as JSON
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.decode:
        print(json.dumps(decode(a.decode, a.rounds, a.new)))
        return 0
    root = a.checkpoints or cache_dir() / "families"
    rows = []
    with tempfile.TemporaryDirectory(prefix="efflm-families-") as t:
        tmp = Path(t)
        for name in a.families.split(","):
            path = write_checkpoint(name, a.layers, root)
            cfg = json.loads((path / "config.json").read_text())
            dense = decode_apart(str(path), a)
            rows.append(dict(family=name, layers=cfg["num_hidden_layers"], method="dense", wall=None, rss=None,
                             bytes=sum(f.stat().st_size for f in path.glob("*.safetensors")), **dense))  # fmt: skip
            print(rows[-1], flush=True)
            for method in [m for m in a.methods.split(",") if m]:
                why = SHAPES[name].get("skip", {}).get(method)
                if why:
                    rows.append(dict(family=name, layers=cfg["num_hidden_layers"], method=method, skipped=why))
                    continue
                r = compress(path, method, tmp)
                speed = decode_apart(str(r["out"]), a)
                rows.append(dict(family=name, layers=cfg["num_hidden_layers"], method=method, wall=r["wall"],
                                 rss=r["rss"], bytes=r["bytes"], **speed))  # fmt: skip
                shutil.rmtree(r["out"])
                print(rows[-1], flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    a.out.write_text(render(rows, a))
    print(a.out.read_text())
    return 0


def render(rows: list[dict], a) -> str:
    lines = [
        "# Model families at real members' shapes",
        "",
        f"`python benchmarks/families.py --layers {a.layers} --rounds {a.rounds} --new {a.new} "
        f"--threads {a.threads}` on {torch_threads_note(a.threads)}. Random-weight checkpoints at each member's "
        f"widths with {a.layers} decoder layers (Mixtral: 2) and SmolLM2's 49152-token vocabulary, bf16 on disk "
        "(compressed in fp32): the costs are real, the outputs are noise (no quality column). Compress: one "
        "`efflm compress` process (layer-streamed where the method is layerwise, the MoE model included; svd "
        "loads the model whole) (8 calibration windows of 512 tokens where the method calibrates), wall "
        "seconds and its peak RSS. Decode, after casting the result to bf16 in-process (`dense` with `dtype: bfloat16`, as the leaderboard's speed rows do; efflm's kernels take bf16): greedy batch 1, 16-token prompt, median of interleaved rounds; "
        "`c` is efflm's fused C step, `torch` its reference path (the C column says why not where it does not "
        "apply). Recipes: " + "; ".join(f"{k}: `{v.strip().replace(chr(10), ', ')}`" for k, v in RECIPES.items()) + ".",
        "",
        "| family | layers | method | compress s | peak RSS GB | bytes on disk GB | decode tok/s (C) | decode tok/s (torch) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['family']} | {r['layers']} | {r['method']} | not run: {r['skipped']} | | | | |")
            continue
        c = f"{r['c']:.1f}" if "c" in r else "–"
        lines.append(
            f"| {r['family']} | {r['layers']} | {r['method']} | {_f(r['wall'], 1)} | {_f(r['rss'] and r['rss'] / 1e9)}"
            f"{' *' if r.get('note') else ''} "
            f"| {r['bytes'] / 1e9:.2f} | {c} | {r['torch']:.1f} |"
        )
    whys: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        if r.get("why"):
            whys.setdefault((r["family"], r["why"]), []).append(r["method"])
    if whys:
        lines += ["", "Where the C column is empty, efflm's decode path says why (`Engine.fast_off`):", ""]
        lines += [f"- {family} ({', '.join(methods)}): {why}" for (family, why), methods in whys.items()]
    notes = [r["note"] for r in rows if r.get("note")]
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def torch_threads_note(threads: int) -> str:
    import os

    return f"{os.cpu_count()} cores, {threads} torch threads"


def _f(x, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


if __name__ == "__main__":
    sys.exit(main())
