"""``efflm bench``: every recipe in its own subprocess, one result row each."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from efflm import pipeline
from efflm.bench import db as results
from efflm.core import recipe as recipes
from efflm.core.errors import EfflmError
from efflm.core.progress import progress
from efflm.eval.env import environment, row_env
from efflm.methods import get


@dataclass
class BenchOptions:
    model: str
    recipes: list[recipes.Recipe]
    db_path: Path = results.DEFAULT_DB
    worker_args: dict[str, int | str] = field(default_factory=dict)  # --tasks and --calib-file are strings
    executor: str = "subprocess"  # or "ray" (efflm.bench.ray_executor)
    address: str | None = None  # Ray: join this cluster (else start a local instance)
    gpus_per_row: float = 0.0  # Ray: GPUs each row's task declares


def validate(opts: BenchOptions) -> None:
    """Everything that can be checked before work starts (before the database is opened):
    the model spec, every recipe, the calibration windows, the evaluation and speed lengths."""
    from efflm.datasets import text
    from efflm.models.sources import load_tokenizer, model_config

    w = opts.worker_args
    calib = {k: w[k] for k in ("calib_samples", "calib_len", "calib_file") if k in w}
    for recipe in opts.recipes:
        pipeline.validate(opts.model, recipe, **calib)
    limit = getattr(model_config(opts.model), "max_position_embeddings", None)
    seq_len, windows = w.get("seq_len"), w.get("windows", 1)
    speed_len = w.get("prompt_len", 0) + w.get("new_tokens", 0)
    for name, n in (("--seq-len", seq_len), ("--prompt-len + --new-tokens", speed_len)):
        if limit and n and n > limit:
            raise EfflmError(f"{name} {n} exceeds the model's {limit} positions")
    if seq_len:
        need = max(seq_len, w.get("prompt_len", 0))
        have = text.eval_tokens(load_tokenizer(opts.model), max(seq_len * windows, need)).numel()
        if have < need:
            raise EfflmError(
                f"the evaluation text has {have} tokens, fewer than the {need} that --seq-len / --prompt-len need"
            )


def worker_device(spec: str, executor: str = "subprocess", gpus_per_row: float = 0.0) -> str:
    """The ``--device`` every row's worker gets (``efflm bench --device``), checked before any work:
    resolved here for local workers (``auto`` becomes ``cpu`` or ``cuda:0``). A Ray task sees only
    the GPUs Ray gave it, so Ray rows take ``auto``, ``cpu`` or ``cuda`` (with ``--gpus-per-row``),
    resolved by each task on its node."""
    from efflm.core.device import resolve

    if executor != "ray":
        return str(resolve(spec))
    spec = (spec or "auto").strip().lower()
    if spec not in ("auto", "cpu", "cuda"):
        raise EfflmError(f"--device {spec} with --executor ray: each row runs on the GPUs Ray assigns it "
                         "(give auto, cpu or cuda)")  # fmt: skip
    if spec == "cuda" and not gpus_per_row:
        raise EfflmError(
            "--device cuda with --executor ray needs --gpus-per-row > 0 (Ray hides GPUs from tasks that declare none)"
        )
    return spec


def _describe_exit(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return f"worker killed by {name}{hint}"
    return f"worker exited with code {code} without a result"


def run_worker(model: str, recipe_yaml: str, worker_args: dict, python: str | None = None) -> dict:
    """One row's measurement in its own ``efflm.bench.worker`` process: its result, or a failed
    result saying how the process died. Ctrl-C / SIGTERM kill the worker and propagate."""
    with tempfile.TemporaryDirectory(prefix="efflm-bench-") as tmp:
        rfile, out = Path(tmp) / "recipe.yaml", Path(tmp) / "result.json"
        rfile.write_text(recipe_yaml)
        cmd = [
            python or sys.executable,
            "-m",
            "efflm.bench.worker",
            "--model",
            model,
            "--recipe-file",
            str(rfile),
            "--out",
            str(out),
        ]
        for k, v in worker_args.items():
            cmd += [f"--{k.replace('_', '-')}", str(v)]
        proc = subprocess.Popen(cmd)
        try:
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        return json.loads(out.read_text()) if out.is_file() else {"status": "failed", "error": _describe_exit(code)}


def record(opts: BenchOptions, recipe: recipes.Recipe, conn, env: dict, data: dict) -> dict:
    """Write one row: ``ok`` with its metrics (the rest of the result in ``extra``), or ``failed``
    with its error and no metrics."""
    label, recipe_yaml = recipes.label(recipe), recipes.to_yaml(recipe)
    families = ",".join(sorted({get(c.method).family for c in recipe}))
    if data["status"] != "ok":
        results.insert(conn, status="failed", model=opts.model, label=label, recipe=recipe_yaml,
                       families=families, error=data["error"], env=env)  # fmt: skip
        return data
    env = row_env(env, data)
    extra = {
        k: v
        for k, v in data.items()
        if k not in results.METRICS and k not in ("status", "model_hash", "kernels", "device")
    }
    results.insert(
        conn,
        status="ok",
        model=opts.model,
        label=label,
        recipe=recipe_yaml,
        families=families,
        model_hash=data.get("model_hash"),
        metrics=data,
        env=env,
        extra=extra,
    )
    return data


def run_one(opts: BenchOptions, recipe: recipes.Recipe, conn, env: dict) -> dict:
    try:
        data = run_worker(opts.model, recipes.to_yaml(recipe), opts.worker_args)
    except BaseException:  # Ctrl-C / SIGTERM: the running row is recorded as failed
        record(opts, recipe, conn, env, {"status": "failed", "error": "interrupted"})
        raise
    return record(opts, recipe, conn, env, data)


def bench(opts: BenchOptions) -> list[dict]:
    validate(opts)
    if opts.executor == "ray" and opts.address:
        from efflm.bench.ray_executor import check_address

        check_address(opts.address)  # before the database is touched
    conn = results.connect(opts.db_path)
    env = environment()
    out = []
    if opts.executor == "ray":
        from efflm.bench import ray_executor

        def on_row(recipe, data):
            out.append(record(opts, recipe, conn, env, data))
            status = "ok" if data["status"] == "ok" else f"FAILED: {data['error']}"
            print(f"  {recipes.label(recipe):40s} {status}", file=sys.stderr, flush=True)

        ray_executor.run(opts.model, opts.recipes, opts.worker_args, on_row, opts.address, opts.gpus_per_row)
        return out
    for recipe in progress(opts.recipes, desc=f"bench {opts.model}", total=len(opts.recipes), leave=True):
        data = run_one(opts, recipe, conn, env)
        status = "ok" if data["status"] == "ok" else f"FAILED: {data['error']}"
        print(f"  {recipes.label(recipe):40s} {status}", file=sys.stderr, flush=True)
        out.append(data)
    return out


def _terminate_as_interrupt(signum, frame):  # so SIGTERM leaves a failed row, like Ctrl-C
    raise KeyboardInterrupt


@contextmanager
def sigterm_as_interrupt():
    """For the length of a sweep, SIGTERM interrupts it as Ctrl-C does (the running row is
    recorded as failed); the previous handler is restored afterwards, so a caller's process (a
    test, a notebook) keeps its own."""
    previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
