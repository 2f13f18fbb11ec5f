"""Fine-tuning runs end to end: check every input, load (and compress) the base, apply a
parameter-efficient method, train with checkpoints, write a peft-format adapter, a loss curve
and a results row; and the adapter's other uses — load for generate/eval, merge into the base.

The method recipe is one YAML mapping: the method's fields plus an optional ``train:``
mapping of ``TrainConfig`` fields (``efflm finetune --method-recipe lora.yaml``).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from efflm.core import recipe as recipes
from efflm.core.atomic import atomic_dir, atomic_write_bytes_from
from efflm.core.errors import ConfigError, EfflmError
from efflm.data import finetune as ftdata
from efflm.finetune.adapter import count_trainable, hooks_for
from efflm.finetune.files import load_adapter, read_adapter_config, save_adapter
from efflm.finetune.train import TrainConfig, TrainState, train
from efflm.methods import MethodConfig, config_from_dict, get

N_TRAIN_TASKS, N_TEST_TASKS, N_EVAL_TASKS_PERIODIC = 2000, 100, 32
EVAL_SEQ_LEN, EVAL_WINDOWS = 512, 4


def train_config_from_dict(d: dict, source: str) -> TrainConfig:
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for key, value in d.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            raise ConfigError(
                f"{source}: unknown train option {key!r}" + (f"; did you mean {close[0]!r}?" if close else "")
            )
        want = type(TrainConfig().__getattribute__(key))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            d[key] = float(value)
        elif not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise ConfigError(f"{source}: train option {key} must be {want.__name__}, got {value!r}")
    return TrainConfig(**d)


def read_method_recipe(path: str | Path, steps: int | None = None) -> tuple[MethodConfig, TrainConfig]:
    p = Path(path)
    if not p.is_file():
        raise EfflmError(f"method recipe not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError:
        raise ConfigError(f"{p}: not valid YAML") from None
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, dict) or "method" not in data:
        raise ConfigError(f"{p}: a method recipe is one mapping with a 'method' key (and optional 'train')")
    data = dict(data)
    train_d = data.pop("train", None) or {}
    if not isinstance(train_d, dict):
        raise ConfigError(f"{p}: 'train' must be a mapping of training options")
    cfg = config_from_dict(data)
    if get(cfg.method).family != "finetune":
        raise ConfigError(f"{p}: {cfg.method} is not a fine-tuning method (see `efflm methods`)")
    if steps is not None:
        train_d["steps"] = steps
    return cfg, train_config_from_dict(dict(train_d), str(p))


@dataclass
class Data:
    """A training set: ``batch_at(step, micro, n_micro)`` and how to evaluate on its held-out side."""

    spec: str
    tokenizer: Any
    cfg: TrainConfig
    examples: list | None = None  # (ids, n_prompt) rows, or None for domain windows
    tokens: torch.Tensor | None = None
    rank: int = 0
    world: int = 1

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256(self.spec.encode())
        if self.examples is not None:
            h.update(json.dumps(self.examples).encode())
        else:
            h.update(str(self.tokens.numel()).encode() + self.tokens[:4096].numpy().tobytes())
        return h.hexdigest()[:16]

    def _slice(self, micro: int, n_micro: int) -> range:
        per = self.cfg.batch // (n_micro * self.world)
        start = (micro * self.world + self.rank) * per
        return range(start, start + per)

    def batch_at(self, step: int, micro: int, n_micro: int) -> dict[str, torch.Tensor]:
        cfg, rows = self.cfg, self._slice(micro, n_micro)
        if self.examples is None:
            g = torch.Generator().manual_seed(cfg.seed * 1_000_033 + step)
            starts = torch.randint(0, self.tokens.numel() - cfg.seq_len, (cfg.batch,), generator=g)
            ids = torch.stack([self.tokens[s : s + cfg.seq_len] for s in starts[rows.start : rows.stop].tolist()])
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
        n, out = len(self.examples), []
        for j in rows:
            i = step * cfg.batch + j
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_019 + i // n))
            out.append(self.examples[int(perm[i % n])])
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        return ftdata.collate(out, pad, cfg.seq_len)


def load_data(spec: str, tokenizer: Any, cfg: TrainConfig) -> Data:
    """Read and check the training data before any weights load."""
    if spec == "domain":
        from efflm.data.text import DEV_TOKENS, _split_tokens

        tokens = _split_tokens(tokenizer, "calib")[:-DEV_TOKENS]
        if tokens.numel() <= cfg.seq_len:
            raise EfflmError(f"calibration split too short for seq_len {cfg.seq_len}")
        return Data(spec, tokenizer, cfg, tokens=tokens)
    if spec == "tasks":
        rows = [ftdata.encode_chat(tokenizer, t.prompt, t.answer) for t in ftdata.tasks("train", N_TRAIN_TASKS)]
        longest = max(len(ids) for ids, _ in rows)
        if longest > cfg.seq_len:
            raise EfflmError(f"tasks: examples reach {longest} tokens, more than train.seq_len {cfg.seq_len}")
        return Data(spec, tokenizer, cfg, examples=rows)
    if not spec.endswith(".jsonl"):
        raise EfflmError(f"--data must be 'domain', 'tasks' or a .jsonl file, got {spec!r}")
    return Data(spec, tokenizer, cfg, examples=ftdata.read_jsonl(spec, tokenizer, max_tokens=cfg.seq_len))


def evaluator(data_spec: str, tokenizer: Any, final: bool):
    """The held-out metrics of a data set: perplexity on the evaluation split; task accuracy."""
    from efflm.data.text import eval_tokens
    from efflm.eval.metrics import perplexity
    from efflm.eval.tasks import task_accuracy

    ids = eval_tokens(tokenizer, EVAL_SEQ_LEN * EVAL_WINDOWS)

    def run(model) -> dict:
        out = {"ppl": perplexity(model, ids, EVAL_SEQ_LEN, EVAL_WINDOWS)["ppl"]}
        if data_spec == "tasks":
            n = N_TEST_TASKS if final else N_EVAL_TASKS_PERIODIC
            out.update(task_accuracy(model, tokenizer, ftdata.tasks("test", n)))
        return out

    return run


def base_identity(model_spec: str, recipe: recipes.Recipe) -> dict:
    from efflm.models.load import content_hash

    h = hashlib.sha256((content_hash(model_spec) + recipes.to_yaml(recipe)).encode()).hexdigest()[:16]
    return {"spec": model_spec, "hash": h, "recipe": recipes.to_yaml(recipe), "label": recipes.label(recipe) or "dense"}


def _fingerprint(base: dict, tune: MethodConfig, cfg: TrainConfig, data: Data) -> str:
    blob = json.dumps([base["hash"], tune.to_dict(), cfg.to_dict(), data.fingerprint], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --- checkpoints ---------------------------------------------------------------------------
def _latest_checkpoint(out: Path) -> Path | None:
    cks = sorted(
        out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]) if p.name.split("-")[1].isdigit() else -1
    )
    return cks[-1] if cks else None


def write_checkpoint(out: Path, model, state: TrainState, opt, sched, hooks, fingerprint: str) -> None:
    tensors = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad or "lora_A" in n}
    target = out / f"checkpoint-{state.step}"
    if target.exists():
        return
    with atomic_dir(target, replace=True) as tmp:
        torch.save(
            {
                "tensors": tensors,
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "hooks": hooks.state_dict(),
                "state": dataclasses.asdict(state),
                "fingerprint": fingerprint,
            },
            tmp / "state.pt",
        )
    for old in out.glob("checkpoint-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)


def read_checkpoint(out: Path, fingerprint: str) -> dict:
    ck = _latest_checkpoint(out)
    if ck is None or not (ck / "state.pt").is_file():
        raise EfflmError(f"{out}: no checkpoint to resume from")
    blob = torch.load(ck / "state.pt", weights_only=True)
    if blob["fingerprint"] != fingerprint:
        raise EfflmError(
            f"{out}: --resume with a different base, method, training config or data than the checkpoint's"
        )
    return blob


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


# --- the command ---------------------------------------------------------------------------
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
) -> dict:
    """Train ``tune`` on ``model_spec`` (after ``recipe``), write the adapter to ``out``; with
    ``db``, measure the adapted model like a bench row and record it there."""
    from efflm import pipeline
    from efflm.core.registry import check_for_model
    from efflm.eval.metrics import model_bytes, peak_rss_mb
    from efflm.models.load import load_tokenizer

    out = Path(out)
    if out.exists() and not resume:
        raise EfflmError(f"output exists: {out} (choose another --out, or --resume)")
    if resume and not out.is_dir():
        raise EfflmError(f"--resume: {out} is not a fine-tuning output directory")
    hf_config = pipeline.validate(model_spec, recipe)
    check_for_model(hf_config, tune)
    tok = load_tokenizer(model_spec)
    data = load_data(data_spec, tok, cfg)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if cfg.batch % (cfg.grad_accum * world):
        raise EfflmError(f"batch {cfg.batch} must divide into grad_accum {cfg.grad_accum} x {world} processes")
    data.rank, data.world = rank, world
    base = base_identity(model_spec, recipe)
    fingerprint = _fingerprint(base, tune, cfg, data)
    blob = read_checkpoint(out, fingerprint) if resume else None

    import time

    t0 = time.perf_counter()
    if db is not None:
        from efflm.bench import db as results

        results.connect(db).close()  # an unusable database fails now, not after training
    model, tok = pipeline.load_and_apply(model_spec, recipe)
    base_disk = _disk_bytes(model, tok, recipe) if db is not None else None
    model = get(tune.method).apply(model, tune, None)
    from efflm.finetune.files import is_adapter_tensor

    # the base as trained on (QLoRA quantizes it inside its apply), without the adapter's tensors
    base_bytes = model_bytes(model) - sum(
        p.numel() * p.element_size() for n, p in model.named_parameters() if is_adapter_tensor(n)
    )
    hooks = hooks_for(tune.method)
    state, opt_state = None, None
    if blob is not None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, t in blob["tensors"].items():
                params[n].copy_(t)
        state = TrainState(**blob["state"])
        opt_state = {"optimizer": blob["optimizer"], "scheduler": blob["scheduler"]}
        hooks.load_state_dict(blob["hooks"])

    def checkpoint(st, opt, sched):
        if rank == 0:
            write_checkpoint(out, model, st, opt, sched, hooks, fingerprint)

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
            optimizer_state=opt_state,
            evaluate=evaluate,
            on_checkpoint=checkpoint,
            stop_at=stop_at,
        )
    finally:
        signal.signal(signal.SIGTERM, prev)
    result = {"steps": state.step, "final_loss": state.losses[-1] if state.losses else None}
    if state.step < cfg.steps:
        return result  # stopped early: the checkpoint is the output
    metrics = evaluator(data_spec, tok, final=True)(model)
    n_train = count_trainable(model) or sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    result.update(
        {
            **metrics,
            "trainable_params": n_train,
            "train_tokens": state.tokens,
            "train_tok_s": state.tokens / max(state.seconds, 1e-9),
            "step_s": state.seconds / max(state.step - (blob["state"]["step"] if blob else 0), 1),
            "peak_rss_mb": peak_rss_mb(),
            "base_bytes": base_bytes,
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
        save_adapter(model, tune, out, meta, into_existing=True)
        loss_png(state, out / "loss.png", f"{tune.label()} on {base['label']}")
        if db is not None:
            record(db, model_spec, recipe, tune, cfg, data_spec, model, tok, t0, base_disk, out, result)
    return result


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
    from efflm.eval.env import environment

    adapter_file = (out / "adapter_model.safetensors").stat().st_size
    m = measure(model, tok, model_spec, t0, base_disk + adapter_file, EVAL_SEQ_LEN, EVAL_WINDOWS, 128, 32, 2)
    m["peak_rss_mb"] = result["peak_rss_mb"]
    full = recipe + [tune]
    label = f"{recipes.label(full)} [{data_spec}, {cfg.steps} steps]"
    extra = {k: v for k, v in result.items() if k not in results.METRICS and k not in ("losses", "evals")}
    extra.update({"adapter_bytes": adapter_file, "train": cfg.to_dict(), "data": data_spec})
    families = ",".join(sorted({get(c.method).family for c in full}))
    recipe_text = recipes.to_yaml(full) + yaml.safe_dump({"train": cfg.to_dict(), "data": data_spec})
    conn = results.connect(db)
    try:
        results.insert(conn, status="ok", model=model_spec, label=label, recipe=recipe_text, families=families,
                       model_hash=m.get("model_hash"), metrics=m, env=environment(), extra=extra)  # fmt: skip
    finally:
        conn.close()


def load_model(model_spec: str, recipe: recipes.Recipe, adapter: str | Path | None = None):
    """``(model, tokenizer)``: the base after ``recipe``, with the adapter (unmerged) if given."""
    from efflm import pipeline

    if adapter is None:
        return pipeline.load_and_apply(model_spec, recipe)
    config, meta = read_adapter_config(adapter)
    hf_config = pipeline.validate(model_spec, recipe)
    from efflm.core.registry import check_for_model

    check_for_model(hf_config, config)
    from efflm.finetune.files import check_base

    check_base(Path(adapter), meta, base_identity(model_spec, recipe)["hash"])
    model, tok = pipeline.load_and_apply(model_spec, recipe)
    model, _ = load_adapter(model, adapter)
    return model, tok


MERGEABLE = ("lora", "dora", "lora_fa", "dylora", "qlora", "ia3", "adalora")


def _requantize(adapter: torch.nn.Module, merged: torch.nn.Linear) -> torch.nn.Module:
    """The merged weight back on the base's own storage: its grid, NF4, or its zero mask."""
    from efflm.nn.nf4_linear import NF4Linear
    from efflm.nn.registry import role
    from efflm.quantize.grid import to_quant_linear

    base = adapter.base
    if isinstance(base, NF4Linear):
        return NF4Linear.from_linear(merged, base.block, base.scale_block)
    if role(base) == "weight_grid":
        ql = to_quant_linear(merged, base.bits, base.group_size, base.symmetric)
        ql.set_compute_dtype(base.compute_dtype)
        return ql
    if isinstance(base, torch.nn.Linear):
        zeros = base.weight == 0
        if zeros.float().mean() >= 0.1:  # a pruned base keeps every zero
            with torch.no_grad():
                merged.weight.masked_fill_(zeros, 0.0)
        return merged
    raise EfflmError(f"cannot merge into a {type(base).__name__} base (its storage cannot hold a dense update)")


def merge(model_spec: str, recipe: recipes.Recipe, adapter: str | Path, out: str | Path) -> dict:
    """Fold the adapter into the base; a quantized base is re-quantized on its own grid and the
    perplexity drift that costs is measured (unmerged vs merged, same windows)."""
    from efflm.data.text import eval_tokens
    from efflm.eval.metrics import perplexity
    from efflm.io.save import save
    from efflm.nn.adapters import adapter_modules
    from efflm.nn.registry import role

    out = Path(out)
    if out.exists():
        raise EfflmError(f"output exists: {out} (choose another --out)")
    config, _ = read_adapter_config(adapter)
    if config.method not in MERGEABLE:
        raise EfflmError(
            f"{config.method} adapters are not a weight update and cannot be merged (apply with --adapter)"
        )
    model, tok = load_model(model_spec, recipe, adapter)
    adapters = adapter_modules(model)
    for path, m in adapters.items():
        base = m.base
        if not (isinstance(base, torch.nn.Linear) or role(base) in ("weight_grid", "nf4")):
            raise EfflmError(f"cannot merge into {path}: a {type(base).__name__} base cannot hold a dense update")
    quantized = any(not isinstance(m.base, torch.nn.Linear) for m in adapters.values())
    ids = eval_tokens(tok, EVAL_SEQ_LEN * EVAL_WINDOWS)
    before = perplexity(model, ids, EVAL_SEQ_LEN, EVAL_WINDOWS)["ppl"] if quantized else None
    from efflm.finetune.adapter import merge as fold

    with torch.no_grad():
        fold(model, _requantize)
    result = {"adapters": len(adapters), "quantized": quantized}
    if quantized:
        after = perplexity(model, ids, EVAL_SEQ_LEN, EVAL_WINDOWS)["ppl"]
        result.update({"ppl_unmerged": before, "ppl_merged": after, "drift": after / before - 1})
        result["note"] = (
            f"merged {len(adapters)} adapters and re-quantized on the base's grid: perplexity {before:.3f} "
            f"unmerged -> {after:.3f} merged ({result['drift'] * 100:+.2f}%)"
        )
    else:
        result["note"] = f"merged {len(adapters)} adapters into the dense base"
    save(model, tok, out, recipes.to_yaml(recipe))
    return result


RECOVERY_TUNE = {"method": "lora", "r": 8, "alpha": 16.0}
RECOVERY_TRAIN = {"steps": 100, "batch": 4, "seq_len": 128, "lr": 1e-3, "warmup": 10}


def recovery_suite(model_spec: str, bases: list[recipes.Recipe], db: Path) -> None:
    """``efflm bench --suite finetune``: the same LoRA trained on each compressed base (``efflm
    finetune --data domain``, one process each, so peak RSS is each run's own); each a results row."""
    import subprocess
    import sys
    import tempfile

    from efflm.core.progress import progress

    with tempfile.TemporaryDirectory(prefix="efflm-recovery-") as tmp:
        tmp = Path(tmp)
        (tmp / "tune.yaml").write_text(yaml.safe_dump({**RECOVERY_TUNE, "train": RECOVERY_TRAIN}))
        for i, base in enumerate(progress(bases, desc="finetune suite", total=len(bases), leave=True)):
            (tmp / f"base{i}.yaml").write_text(recipes.to_yaml(base))
            cmd = [sys.executable, "-m", "efflm.cli", "finetune", "--model", model_spec, "--recipe",
                   str(tmp / f"base{i}.yaml"), "--method-recipe", str(tmp / "tune.yaml"), "--data", "domain",
                   "--out", str(tmp / f"out{i}"), "--db", str(db)]  # fmt: skip
            code = subprocess.run(cmd).returncode
            status = "ok" if code == 0 else f"FAILED (exit {code})"
            print(f"  {recipes.label(base)} + lora: {status}", file=sys.stderr, flush=True)
