"""Benchmark one recipe on one model, in its own process; write the metrics as JSON.

Run by the benchmark runner (``python -m efflm.bench.worker ARGS``), so that a crash or
out-of-memory in one method fails only its row and peak RSS is this method's own.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from efflm.core import recipe as recipes
from efflm.core.errors import EfflmError
from efflm.eval import metrics
from efflm.pipeline import load_and_apply


def run(
    model_spec: str,
    recipe: recipes.Recipe,
    *,
    seq_len: int,
    windows: int,
    prompt_len: int,
    new_tokens: int,
    reps: int,
    calib_samples: int,
    calib_len: int,
    tasks: str = "",
    task_limit: int = 0,
    calib_file: str = "",
    device: str = "cpu",
) -> dict:
    """One row's metrics; with ``calib_file`` (``efflm bench --calib``) calibration draws from it
    and the row records its sha256 (16 hex) as ``calib_sha256``. The model is measured on
    ``device`` (``efflm bench --device``; checked before any weights load), recorded in the row's env."""
    from efflm.core.device import resolve
    from efflm.io.save import dir_bytes, save

    dev = resolve(device)
    t0 = time.perf_counter()
    calib_digest = None
    if calib_file:
        from efflm.datasets.calib_file import file_digest

        calib_digest = file_digest(calib_file)
    model, tok = load_and_apply(model_spec, recipe, calib_samples, calib_len, calib_file=calib_file or None)
    with tempfile.TemporaryDirectory(prefix="efflm-disk-") as tmp:
        disk = dir_bytes(save(model, tok, Path(tmp) / "m", recipes.to_yaml(recipe)))
    model = model.to(dev)  # the saved bytes above are the CPU's; every measurement runs on the device
    result = measure(model, tok, model_spec, t0, disk, seq_len, windows, prompt_len, new_tokens, reps)
    if calib_digest:  # which calibration file this row used (kept in the row's extra)
        result["calib_file"], result["calib_sha256"] = Path(calib_file).name, calib_digest
    if tasks:
        # after the row's own metrics (its peak RSS stays the measurement's); scoring's peak kept apart
        result["tasks"] = task_scores(model, tok, tasks.split(","), task_limit or None)
        result["tasks_peak_rss_mb"] = metrics.peak_rss_mb()
    return result


def task_scores(model, tok, names: list[str], limit: int | None) -> dict:
    """``{task: {"metric", "value", "stderr", "limit"}}``: each task's headline score (lm-eval)."""
    from efflm.eval import lm_eval_run

    out = {}
    names, extra = lm_eval_run.check_tasks(",".join(names))
    for task, m in lm_eval_run.run_tasks(model, tok, names, limit=limit, extra=extra).items():
        name, value, err = lm_eval_run.headline(m)
        out[task] = {"metric": name, "value": value, "stderr": err, "limit": limit}
    return out


def measure(
    model, tok, model_spec: str, t0: float, disk_bytes: int, seq_len: int, windows: int, prompt_len: int,
    new_tokens: int, reps: int,
) -> dict:  # fmt: skip
    """Every leaderboard metric of a loaded model (``t0``: when its run started)."""
    from efflm.core.device import name as device_name
    from efflm.core.device import of as device_of
    from efflm.core.device import peak_memory_mb
    from efflm.datasets import text
    from efflm.models import sources as loader

    ids = text.eval_tokens(tok, max(seq_len * windows, prompt_len))
    result = metrics.perplexity(model, ids, seq_len=seq_len, n_windows=windows)
    result["bytes"] = metrics.model_bytes(model)
    result["bytes_per_token"] = metrics.bytes_read_per_token(model)
    result["sparse_bytes"] = metrics.as_sparse_bytes(model)
    result["disk_bytes"] = disk_bytes
    result.update(metrics.speed(model, ids[:prompt_len], new_tokens=new_tokens, reps=reps))
    result["notes"] = list(getattr(model, "efflm_notes", []))  # what a method fell back to (calib.layerwise.note)
    result["kernels"] = {"fast_decode": metrics.decode_path(model)}  # the choice made; the row's env keeps it
    where = device_of(model)
    result["device"] = device_name(where)  # the row's env keeps it too
    if where.type != "cpu":  # the packed CPU kernels never run there: every module dequantizes in torch
        result["kernels"]["q4"] = "torch"
        result["gpu_peak_mb"] = peak_memory_mb(where)
    result["bandwidth_gbs"] = metrics.bandwidth_gbs()
    result["ceiling_tok_s"] = result["bandwidth_gbs"] * 1e9 / result["bytes_per_token"]
    result["wall_s"] = time.perf_counter() - t0
    result["peak_rss_mb"] = metrics.peak_rss_mb()
    result["model_hash"] = loader.content_hash(model_spec)
    result.update(metrics.describe(model))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="efflm-worker")
    p.add_argument("--model", required=True)
    p.add_argument("--recipe-file", required=True)
    p.add_argument("--out", required=True)
    for name in ("seq-len", "windows", "prompt-len", "new-tokens", "reps", "calib-samples", "calib-len", "threads"):
        p.add_argument(f"--{name}", type=int, required=name != "threads", default=0)
    p.add_argument("--tasks", default="")
    p.add_argument("--task-limit", type=int, default=0)
    p.add_argument("--calib-file", default="")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        recipe = recipes.load(a.recipe_file)
        out = {
            "status": "ok",
            **run(
                a.model,
                recipe,
                seq_len=a.seq_len,
                windows=a.windows,
                prompt_len=a.prompt_len,
                new_tokens=a.new_tokens,
                reps=a.reps,
                calib_samples=a.calib_samples,
                calib_len=a.calib_len,
                tasks=a.tasks,
                task_limit=a.task_limit,
                calib_file=a.calib_file,
                device=a.device,
            ),
        }
    except EfflmError as e:
        out = {"status": "failed", "error": str(e)}
    except Exception as e:  # a crash in one method fails its row only
        out = {"status": "failed", "error": f"{type(e).__name__}: {e}".splitlines()[0][:500]}
    tmp = a.out + ".tmp"
    Path(tmp).write_text(json.dumps(out))
    os.replace(tmp, a.out)
    return 0 if out["status"] == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
