"""Compression at real models' sizes in bounded memory: layer-streamed GPTQ on random-weight
checkpoints of TinyLlama-1.1B's, Llama-3.2-3B's and Llama-3.1-8B's shapes (bf16, SmolLM2's
vocabulary; written by ``benchmarks/scale_checkpoints.py``), QLoRA on the 8B shape, and the
streamed path against the whole-model path on the default model.

    python benchmarks/scale_compress.py [--models tinyllama-1.1b,llama-3.2-3b,llama-3.1-8b]
        [--whole tinyllama-1.1b] [--qlora llama-3.1-8b] [--rounds 4] [--device cpu]

Every row is one ``efflm`` command in its own process (``efflm compress`` / ``efflm finetune``,
every option on the command line shown in the table); peak RSS is that process's
``ru_maxrss`` (``os.wait4``), wall time is the process's. Per-layer seconds come from the
streamed output's ``efflm.json``. ``--whole`` rows run the same command with
``EFFLM_STREAM=0`` (the whole model loaded first, as efflm did before streaming). The default
model rows alternate streamed and whole runs ``--rounds`` times (median wall time) and score
each output's perplexity with ``efflm eval``. The memory model (``predict``) is printed beside
each measurement and for a 70B-shaped model this machine's disk cannot hold.
Writes ``results/scale_compress.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
EFFLM = [sys.executable, "-m", "efflm.cli"]
GPTQ = "method: gptq\nbits: 4\ngroup_size: 128\n"
GPTQ_DEFAULT = "method: gptq\nbits: 4\ngroup_size: 64\n"  # SmolLM2's 576-wide inputs take no 128-groups
GB = 1e9

# shapes for the memory model only (70B: Llama-3.1-70B's, with SmolLM2's vocabulary like the others)
LLAMA_70B = {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
             "num_key_value_heads": 8, "vocab_size": 49152, "tie_word_embeddings": False}  # fmt: skip


def run(cmd: list[str], env: dict | None = None) -> dict:
    """One process: wall seconds, its own peak RSS (bytes, from ``os.wait4``), its stdout; a failure
    raises with the end of its stderr."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{stderr[-2000:]}")
    return {"wall": wall, "rss": usage.ru_maxrss * 1024, "stdout": stdout}


def predict(cfg: dict, samples: int = 8, seq: int = 512) -> dict:
    """Peak bytes of a streamed GPTQ ``compress``, all float32: while a layer is calibrated, the layer
    + its largest solve (two n × n Hessian matrices — the permuted copy and its Cholesky factor — and
    three copies of the stacked weight: the working copy, its permutation, the codes) + the
    calibration activations; the tensors outside the layers are freed meanwhile (read at the start
    and again at the end), so the peak is the larger of the two phases."""
    h, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or h // heads
    layer = h * (heads * hd) * 2 + h * (kv * hd) * 2 + 3 * h * inter + 2 * h
    outside = vocab * h * (1 if cfg.get("tie_word_embeddings") else 2) + h
    groups = [(h, heads * hd + 2 * kv * hd), (heads * hd, h), (h, 2 * inter), (inter, h)]  # (in, stacked out)
    solve = max(2 * n * n + 3 * n * out for n, out in groups)
    acts = samples * seq * (2 * h + 3 * inter)  # layer inputs and outputs, gate/up/act of the MLP
    parts = {"outside": 4 * outside, "layer": 4 * layer, "solve": 4 * solve, "activations": 4 * acts}
    base = 0.6 * GB  # the interpreter, torch and transformers
    parts["total"] = base + max(parts["outside"], parts["layer"] + parts["solve"] + parts["activations"])
    return parts


def _config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())


def compress_row(model: str, path: Path, tmp: Path, streamed: bool, device: str, recipe: Path) -> dict:
    out = tmp / f"{model}-{'s' if streamed else 'w'}-{time.monotonic_ns()}"
    cmd = [*EFFLM, "compress", "--model", str(path), "--recipe", str(recipe), "--out", str(out), "--device", device]
    r = run(cmd, None if streamed else {"EFFLM_STREAM": "0"})
    meta = json.loads((out / "efflm.json").read_text())
    secs = list(meta.get("stream", {}).get("layer_seconds", {}).values())
    size = sum(f.stat().st_size for f in out.iterdir())
    r.update(model=model, streamed=streamed, out=out, bytes=size, layers=len(secs),
             layer_median=statistics.median(secs) if secs else None, pred=predict(_config(path))["total"])  # fmt: skip
    return r


def main(argv: list[str] | None = None) -> int:
    from scale_checkpoints import SHAPES, write_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(SHAPES))
    ap.add_argument("--whole", default="tinyllama-1.1b", help="shapes also run whole-model (EFFLM_STREAM=0)")
    ap.add_argument("--qlora", default="llama-3.1-8b", help="shapes given 2 QLoRA steps of 1 x 256 tokens")
    ap.add_argument("--default-model", default="smollm2-135m")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--checkpoints", help="where the checkpoints are (written if absent; default: efflm's cache)")
    ap.add_argument("--cache", help="JSON of finished compress rows: reused, and each new row added (a run resumes)")
    ap.add_argument("--out", default=str(ROOT / "results" / "scale_compress.md"))
    a = ap.parse_args(argv)
    cache = json.loads(Path(a.cache).read_text()) if a.cache and Path(a.cache).is_file() else {}
    ckpt = lambda name: write_checkpoint(name, a.checkpoints)  # noqa: E731
    tmp = Path(tempfile.mkdtemp(prefix="efflm-scale-"))
    recipe = tmp / "gptq.yaml"
    recipe.write_text(GPTQ)
    rows = []
    models = [m for m in a.models.split(",") if m]
    whole = [m for m in a.whole.split(",") if m]
    for name in models:
        path = ckpt(name)
        for streamed in [False, True] if name in whole else [True]:
            key = f"{name} {'streamed' if streamed else 'whole'} {a.device}"
            if key in cache:
                rows.append({**cache[key], "pred": predict(_config(path))["total"]})
                continue
            r = compress_row(name, path, tmp, streamed, a.device, recipe)
            print(f"{name} {'streamed' if streamed else 'whole'}: {r['wall']:.0f} s, peak RSS {r['rss'] / GB:.2f} GB")
            _rm(r["out"])
            r = {k: v for k, v in r.items() if k not in ("out", "stdout")}
            rows.append(r)
            if a.cache:
                cache[key] = r
                Path(a.cache).write_text(json.dumps(cache, indent=1))
    qlora = []
    for name in [m for m in a.qlora.split(",") if m]:
        key = f"qlora {name} {a.device}"
        q = cache[key] if key in cache else qlora_row(name, ckpt(name), tmp, a.device)
        qlora.append(q)
        if a.cache and "error" not in q:
            cache[key] = q
            Path(a.cache).write_text(json.dumps(cache, indent=1))
    default_recipe = tmp / "gptq-default.yaml"
    default_recipe.write_text(GPTQ_DEFAULT)
    default = default_rows(a.default_model, tmp, a.rounds, a.device, default_recipe)
    for r in rows:
        r["config"] = _config(ckpt(r["model"]))
    Path(a.out).write_text(render(rows, qlora, default, a))
    print(f"wrote {a.out}")
    return 0


def qlora_row(name: str, path: Path, tmp: Path, device: str) -> dict:
    """2 QLoRA steps of 1 × 256 tokens on an NF4 base streamed from ``path``; ``--no-eval``: the
    held-out evaluation of a results row would take longer than the training it measures."""
    nf4, method = tmp / "nf4.yaml", tmp / "qlora.yaml"
    nf4.write_text("method: nf4\n")
    method.write_text("method: qlora\nr: 8\ntrain:\n  steps: 2\n  batch: 1\n  seq_len: 256\n  warmup: 0\n")
    out = tmp / f"qlora-{name}"
    cmd = [*EFFLM, "finetune", "--model", str(path), "--recipe", str(nf4), "--method-recipe", str(method),
           "--data", "domain", "--out", str(out), "--no-eval", "--device", device]  # fmt: skip
    try:
        r = run(cmd)
    except RuntimeError as e:  # reported as a failed row, the other rows kept
        print(f"qlora {name}: failed: {e}")
        return {"model": name, "cmd": cmd, "error": str(e).splitlines()[-1][:200]}
    metrics = json.loads((out / "efflm_adapter.json").read_text()).get("metrics", {})
    _rm(out)
    print(f"qlora {name}: {r['wall']:.0f} s, peak RSS {r['rss'] / GB:.2f} GB")
    return {"model": name, "cmd": cmd, "wall": r["wall"], "rss": r["rss"], "step_s": metrics.get("step_s_median")}


def default_rows(model: str, tmp: Path, rounds: int, device: str, recipe: Path) -> dict:
    from efflm.models.sources import weights_dir

    walls: dict[bool, list[float]] = {True: [], False: []}
    ppl: dict[bool, str] = {}
    path = weights_dir(model)
    for _ in range(rounds):
        for streamed in (True, False):  # interleaved rounds
            r = compress_row(model, path, tmp, streamed, device, recipe)
            walls[streamed].append(r["wall"])
            if streamed not in ppl:
                e = run([*EFFLM, "eval", "--model", str(r["out"]), "--device", device])
                ppl[streamed] = re.search(r"ppl ([0-9.]+)", e["stdout"]).group(1)
            _rm(r["out"])
    return {"walls": walls, "ppl": ppl}


def _rm(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def render(rows: list[dict], qlora: list[dict], default: dict, a) -> str:
    import platform

    import torch

    lines = [
        "# Compression at real models' sizes, layer by layer",
        "",
        "Regenerate: `python benchmarks/scale_compress.py` (checkpoints: `python benchmarks/scale_checkpoints.py`).",
        f"Machine: {os.cpu_count()} cores, {_mem_gb():.0f} GB RAM, {platform.machine()}; torch {torch.__version__}; "
        f"device `{a.device}`. The checkpoints are **random weights** at the real models' shapes (bf16 on disk, "
        "SmolLM2's 49,152-token vocabulary), so only sizes and times mean anything here; quality rows use the "
        "default model. GPU rows: not run (no GPU was lent to the session that wrote this file).",
        "",
        "## GPTQ W4 g128 (8 × 512 calibration tokens), `efflm compress --device " + a.device + "`",
        "",
        "| model shape | parameters | path | wall s | layers | median s / layer | peak RSS GB | memory model GB | output GB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        n = _params(r["config"])
        lines.append(
            f"| {r['model']} | {n / 1e9:.2f} B | {'streamed' if r['streamed'] else 'whole (EFFLM_STREAM=0)'}"
            f"{' ¹' if r.get('source') else ''} | "
            f"{r['wall']:.0f} | {r['layers'] or '–'} | {_f(r['layer_median'])} | {r['rss'] / GB:.2f} | "
            f"{_f(r['pred'] / GB if r['streamed'] else None)} | {_f(r['bytes'] and r['bytes'] / GB)} |"
        )
    p70 = predict(LLAMA_70B)
    sources = sorted({r["source"] for r in rows if r.get("source")})
    lines += ["", *[f"¹ {src}" for src in sources]] if sources else []
    lines += [
        "",
        "Memory model (float32 working copies; `predict` in the script): peak ≈ 0.6 GB (interpreter and "
        "libraries) + the larger of the tensors outside the layers (read at the start and the end, freed while "
        "the layers stream) and one decoder layer + its largest solve (two n × n matrices: the permuted Hessian "
        "and its Cholesky factor; three copies of the stacked weight) + the calibration activations (samples × "
        "length × (2 hidden + 3 intermediate)). For a Llama-3.1-70B shape (SmolLM2 vocabulary) it predicts "
        f"**{p70['total'] / GB:.1f} GB** (one layer {p70['layer'] / GB:.1f}, solve {p70['solve'] / GB:.1f}, "
        f"activations {p70['activations'] / GB:.1f}; outside the layers {p70['outside'] / GB:.1f}).",
        "",
    ]
    if qlora:
        lines += ["## QLoRA on an NF4 base loaded layer by layer (`efflm finetune --recipe nf4 --method-recipe qlora`)",
                  "", "| model shape | steps × tokens | wall s (load + train) | median s / step | peak RSS GB |",
                  "|---|---|---|---|---|"]  # fmt: skip
        lines += [
            f"| {q['model']} | 2 × (1 × 256) | failed: {q['error']} | – | – |"
            if "error" in q
            else f"| {q['model']} | 2 × (1 × 256) | {q['wall']:.0f} | {_f(q.get('step_s'))} | {q['rss'] / GB:.2f} |"
            for q in qlora
        ]
        lines += ["", f"`efflm finetune --model CHECKPOINT --recipe nf4.yaml --method-recipe qlora.yaml --data domain "
                  f"--no-eval --device {a.device}`, nf4.yaml `method: nf4`, qlora.yaml `method: qlora`, `r: 8`, `train:` "
                  "steps 2, batch 1, seq_len 256, warmup 0 (target: peak RSS ≤ 10 GB).", ""]  # fmt: skip
    w = default["walls"]
    ratio = statistics.median(w[True]) / statistics.median(w[False])
    lines += [
        f"## Streamed against whole-model GPTQ W4 g64 on the default model ({a.default_model}, {a.rounds} interleaved rounds)",
        "",
        "| path | median wall s | perplexity (efflm eval, default windows) |",
        "|---|---|---|",
        f"| streamed | {statistics.median(w[True]):.1f} | {default['ppl'][True]} |",
        f"| whole (EFFLM_STREAM=0) | {statistics.median(w[False]):.1f} | {default['ppl'][False]} |",
        "",
        f"Streamed / whole wall time: **{ratio:.2f}×** (target ≤ 1.1×). The outputs are equal tensor for tensor "
        "(tests/test_pipeline.py checks every layerwise method).",
        "",
    ]
    return "\n".join(lines)


def _params(cfg: dict) -> int:
    p = predict(cfg)
    return int((p["outside"] + p["layer"] * cfg["num_hidden_layers"]) / 4)


def _f(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def _mem_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB


if __name__ == "__main__":
    sys.exit(main())
