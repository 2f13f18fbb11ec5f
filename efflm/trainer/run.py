"""A fine-tuning run end to end (``efflm finetune``): check every input, load (and compress) the
base, apply a fine-tuning method, train with checkpoints, write a peft-format adapter, a loss curve
and, with ``db``, a results row measured like every bench row; and the recovery suite
(``efflm bench --suite finetune``) that runs it once per compressed base."""

from __future__ import annotations

import os
import signal
import statistics
from pathlib import Path

import torch
import yaml

from efflm.core import recipe as recipes
from efflm.core.atomic import atomic_write_bytes_from
from efflm.core.errors import EfflmError
from efflm.finetune.adapter import count_trainable
from efflm.finetune.hooks import hooks_for
from efflm.finetune.peft_files import save_adapter
from efflm.finetune.train import TrainConfig, TrainState, train
from efflm.methods import MethodConfig, check_for_model, get
from efflm.trainer.batches import EVAL_SEQ_LEN, EVAL_WINDOWS, evaluator, load_data
from efflm.trainer.checkpoints import base_identity, fingerprint_of, read_checkpoint, write_checkpoint
from efflm.trainer.teacher import check_teacher, open_cache


def loss_png(state: TrainState, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(state.losses) + 1), state.losses, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    atomic_write_bytes_from(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def finetune(
    model_spec: str,
    recipe: recipes.Recipe,
    tune: MethodConfig,
    cfg: TrainConfig,
    data_spec: str,
    out: str | Path,
    resume: bool = False,
    stop_at: int | None = None,
    db: str | Path | None = None,
    teacher: str | None = None,
    teacher_recipe: recipes.Recipe | None = None,
    teacher_cache: str | Path | None = None,
    device: str | torch.device | None = "auto",
    final_eval: bool = True,
) -> dict:
    """Train ``tune`` on ``model_spec`` (after ``recipe``), write the adapter (or, for a
    full-parameter method, the whole model under ``out/model``) to ``out``; with ``db``, measure
    the trained model like a bench row and record it there. A distillation method learns from
    ``teacher`` (after ``teacher_recipe``), which must share the student's tokenizer, or from its
    top-k log-probabilities cached by ``efflm distill-cache`` (``teacher_cache``). ``device``
    (``auto``, ``cpu``, ``cuda``, ``cuda:N``; checked first) is where student and teacher train
    and are measured; the files written are the same from any device. ``final_eval=False`` skips the
    held-out evaluation after training (no ``ppl`` in the result), which a results row needs: it
    cannot be combined with ``db``."""
    from efflm import pipeline
    from efflm.core.device import is_cuda, peak_memory_mb
    from efflm.eval.metrics import model_bytes, peak_rss_mb
    from efflm.models.sources import load_tokenizer

    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if db is not None and not final_eval:
        raise EfflmError("a results row needs the final evaluation: give a database or skip the evaluation, not both")
    dev = run_device(device, world)
    if is_cuda(dev):
        torch.cuda.reset_peak_memory_stats(dev)  # the run's own peak (gpu_peak_mb)
    cfg = cfg.on(dev)  # train.bf16: auto decided here, so the fingerprint and records say what ran
    out = Path(out)
    if out.exists() and not resume:
        raise EfflmError(f"output exists: {out} (choose another --out, or --resume)")
    if resume and not out.is_dir():
        raise EfflmError(f"--resume: {out} is not a fine-tuning output directory")
    hf_config = pipeline.validate(model_spec, recipe)
    check_for_model(hf_config, tune)
    tok = load_tokenizer(model_spec)
    distill = get(tune.method).family == "distill"
    if teacher is not None and teacher_cache is not None:
        raise EfflmError("give --teacher or --teacher-cache, not both")
    if distill != (teacher is not None or teacher_cache is not None):
        raise EfflmError(
            f"{tune.method} distills from a teacher: give --teacher (or --teacher-cache)"
            if distill
            else f"--teacher is for distillation methods; {tune.method} is not one"
        )
    if teacher is not None:
        check_teacher(teacher, teacher_recipe or [], hf_config, tok)
    data = load_data(data_spec, tok, cfg)
    cache = open_cache(teacher_cache, tune, cfg, data, hf_config, tok) if teacher_cache is not None else None
    if cfg.batch % (cfg.grad_accum * world):
        raise EfflmError(f"batch {cfg.batch} must divide into grad_accum {cfg.grad_accum} x {world} processes")
    hooks = hooks_for(tune)
    hooks.check_train(cfg, world)
    data.rank, data.world = rank, world
    base = base_identity(model_spec, recipe)
    teacher_id = base_identity(teacher, teacher_recipe or []) if teacher is not None else None
    if cache is not None:
        teacher_id = {**cache.header["teacher"], "cache": str(teacher_cache)}
    fingerprint = fingerprint_of(base, tune, cfg, data, teacher_id)
    blob = read_checkpoint(out, fingerprint) if resume else None

    import time

    from efflm.core.memory import return_freed_memory

    return_freed_memory()  # training's large short-lived tensors are given back when freed
    t0 = time.perf_counter()
    if db is not None:
        from efflm.bench import db as results

        results.connect(db).close()  # an unusable database fails now, not after training
    model, tok = pipeline.load_and_apply(model_spec, recipe)
    base_disk = _disk_bytes(model, tok, recipe) if db is not None else None
    model = get(tune.method).apply(model, tune, None)
    model.to(dev)
    if teacher is not None:
        hooks.attach(pipeline.load_and_apply(teacher, teacher_recipe or [])[0].to(dev))
    elif cache is not None:
        hooks.use_cache(cache)
    from efflm.finetune.peft_files import is_adapter_tensor

    # the base as trained on (QLoRA quantizes it inside its apply), without the adapter's tensors
    base_bytes = model_bytes(model) - sum(
        p.numel() * p.element_size() for n, p in model.named_parameters() if is_adapter_tensor(n)
    )
    state, updater_state = None, None
    if blob is not None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, t in blob["tensors"].items():
                params[n].copy_(t)
        state = TrainState(**blob["state"])
        updater_state = blob["updater"]
        hooks.load_state_dict(blob["hooks"])

    def checkpoint(st, updater):
        if rank == 0:
            write_checkpoint(out, model, st, updater, hooks, fingerprint)

    evaluate = evaluator(data_spec, tok, final=False) if cfg.eval_every else None
    prev = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        state = train(
            model,
            cfg,
            data.batch_at,
            hooks=hooks,
            state=state,
            updater_state=updater_state,
            evaluate=evaluate,
            on_checkpoint=checkpoint,
            stop_at=stop_at,
            device=dev,
        )
    finally:
        signal.signal(signal.SIGTERM, prev)
    result = {"steps": state.step, "final_loss": state.losses[-1] if state.losses else None}
    if state.step < cfg.steps:
        return result  # stopped early: the checkpoint is the output
    metrics = evaluator(data_spec, tok, final=True)(model) if final_eval else {}
    n_train = count_trainable(model) or sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    if hooks.output == "model":
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result.update(
        {
            **metrics,
            "trainable_params": n_train,
            "train_tokens": state.tokens,
            "train_tok_s": state.tokens / max(state.seconds, 1e-9),
            "step_s": state.seconds / max(state.step - (blob["state"]["step"] if blob else 0), 1),
            "step_s_median": statistics.median(state.step_seconds[1:] or state.step_seconds),
            "peak_rss_mb": peak_rss_mb(),
            **({"gpu_peak_mb": peak_memory_mb(dev)} if is_cuda(dev) else {}),
            "base_bytes": base_bytes,
            "truncated_rows": data.truncated,
            "losses": state.losses,
            "evals": state.evals,
        }
    )
    if rank == 0:
        meta = {
            "base": base,
            "train": cfg.to_dict(),
            "data": data_spec,
            "metrics": {k: v for k, v in result.items() if k != "losses"},
            "losses": state.losses,
        }
        if teacher_id is not None:
            meta["teacher"] = teacher_id
        if hooks.output == "model":
            save_model(model, tok, out, recipe + [tune], meta)
        else:
            save_adapter(model, getattr(hooks, "adapter_config", None) or tune, out, meta, into_existing=True)
        loss_png(state, out / "loss.png", f"{tune.label()} on {base['label']}")
        if db is not None:
            record(db, model_spec, recipe, tune, cfg, data_spec, model, tok, t0, base_disk, out, result)
    return result


def run_device(spec: str | torch.device | None, world: int) -> torch.device:
    """The device a run trains on, checked before any weights load. Under a launcher (``world`` >
    1) on GPUs each process takes the GPU of its local rank, so ``cuda:N`` is refused there."""
    from efflm.core import device as devices
    from efflm.finetune.train import SHARDED

    if any(os.environ.get(f"ACCELERATE_USE_{k}", "false").lower() == "true" for k in ("FSDP", "DEEPSPEED")):
        raise EfflmError(SHARDED)
    dev = devices.resolve(spec)
    if world == 1 or not devices.is_cuda(dev):
        return dev
    if ":" in str(spec):
        raise EfflmError(f"--device {spec}: under a launcher each process trains on the GPU of its local rank "
                         "(give --device cuda or auto)")  # fmt: skip
    return devices.resolve(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")


def save_model(model, tok, out: Path, full_recipe: recipes.Recipe, meta: dict) -> None:
    """A full-parameter run's output: the whole trained model under ``out/model`` (loadable by
    every command's --model), and the run's record beside it."""
    import json

    from efflm.core.atomic import atomic_write_text
    from efflm.io.save import save

    if (out / "model").exists():
        import shutil

        shutil.rmtree(out / "model")  # a resumed run that had finished once
    save(model, tok, out / "model", recipes.to_yaml(full_recipe))
    atomic_write_text(out / "efflm_finetune.json", json.dumps(meta, indent=1, default=str))


def _disk_bytes(model, tok, recipe) -> int:
    import tempfile

    from efflm.io.save import dir_bytes, save

    with tempfile.TemporaryDirectory(prefix="efflm-disk-") as tmp:
        return dir_bytes(save(model, tok, Path(tmp) / "m", recipes.to_yaml(recipe)))


def record(db, model_spec, recipe, tune, cfg, data_spec, model, tok, t0, base_disk, out, result) -> None:
    """One results row for the adapted model, measured like every bench row (the adapter's file
    counted in its disk bytes), with the training figures in ``extra``."""
    from efflm.bench import db as results
    from efflm.bench.worker import measure
    from efflm.eval.env import environment, row_env
    from efflm.io.save import dir_bytes

    whole = (out / "model").is_dir()  # a full-parameter run saved every weight
    adapter_file = 0 if whole else (out / "adapter_model.safetensors").stat().st_size
    disk = dir_bytes(out / "model") if whole else base_disk + adapter_file
    m = measure(model, tok, model_spec, t0, disk, EVAL_SEQ_LEN, EVAL_WINDOWS, 128, 32, 2)
    m["peak_rss_mb"] = result["peak_rss_mb"]
    full = recipe + [tune]
    label = recipes.run_label(full, data_spec, cfg.steps)
    extra = {k: v for k, v in result.items() if k not in results.METRICS and k not in ("losses", "evals")}
    extra.update({"train": cfg.to_dict(), "data": data_spec, **({} if whole else {"adapter_bytes": adapter_file})})
    families = ",".join(sorted({get(c.method).family for c in full}))
    recipe_text = recipes.to_stored(full, data=data_spec, train=cfg.to_dict())
    conn = results.connect(db)
    try:
        results.insert(conn, status="ok", model=model_spec, label=label, recipe=recipe_text, families=families,
                       model_hash=m.get("model_hash"), metrics=m, env=row_env(environment(), m), extra=extra)  # fmt: skip
    finally:
        conn.close()


RECOVERY_TUNE = {"method": "lora", "r": 8, "alpha": 16.0}
RECOVERY_KD = {"method": "kd", "divergence": "forward_kl", "r": 8, "alpha": 16.0}
RECOVERY_TRAIN = {"steps": 100, "batch": 4, "seq_len": 128, "lr": 1e-3, "warmup": 10}


def recovery_suite(
    model_spec: str,
    bases: list[recipes.Recipe],
    db: Path,
    distill: bool = False,
    steps: int | None = None,
    device: str = "auto",
) -> None:
    """``efflm bench --suite finetune``: the same LoRA trained on each compressed base (``efflm
    finetune --data domain``, one process each, so peak RSS is each run's own); each a results row.
    ``distill`` (``--suite recover``): the same LoRA trained by KD from the dense model instead.
    ``steps`` (``--train-steps``) replaces the suite's 100 optimizer steps; ``device`` is each run's
    ``--device``."""
    import subprocess
    import sys
    import tempfile

    from efflm.core.progress import progress

    with tempfile.TemporaryDirectory(prefix="efflm-recovery-") as tmp:
        tmp = Path(tmp)
        tune_fields = RECOVERY_KD if distill else RECOVERY_TUNE
        train = {
            **RECOVERY_TRAIN,
            **({"steps": steps, "warmup": min(RECOVERY_TRAIN["warmup"], steps - 1)} if steps else {}),
        }
        (tmp / "tune.yaml").write_text(yaml.safe_dump({**tune_fields, "train": train}))
        teacher = ["--teacher", model_spec] if distill else []
        for i, base in enumerate(
            progress(bases, desc="recover suite" if distill else "finetune suite", total=len(bases), leave=True)
        ):
            (tmp / f"base{i}.yaml").write_text(recipes.to_yaml(base))
            cmd = [sys.executable, "-m", "efflm.cli", "finetune", "--model", model_spec, "--recipe",
                   str(tmp / f"base{i}.yaml"), "--method-recipe", str(tmp / "tune.yaml"), "--data", "domain",
                   "--out", str(tmp / f"out{i}"), "--db", str(db), "--device", str(device), *teacher]  # fmt: skip
            code = subprocess.run(cmd).returncode
            status = "ok" if code == 0 else f"FAILED (exit {code})"
            print(f"  {recipes.label(base)} + {tune_fields['method']}: {status}", file=sys.stderr, flush=True)
