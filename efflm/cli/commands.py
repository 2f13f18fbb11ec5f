"""What each ``efflm`` command does once its arguments parsed (``efflm.cli.parser`` wires them)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from efflm.cli import compressor
from efflm.cli.serve_adapters import named_adapters, served_adapters
from efflm.core.errors import EfflmError


def recipe_arg(path: str | None, fallback: str | None = None):
    from efflm.core import recipe as recipes

    if path:
        return recipes.load(path)
    return recipes.from_yaml(fallback) if fallback else []


def cmd_methods(a) -> int:
    from efflm.core.fields import describe
    from efflm.methods import get, methods

    if getattr(a, "name", None):
        m = get(a.name)
        extra = []
        if m.family in ("finetune", "distill"):
            from efflm.finetune.train import TrainConfig

            extra = [("train (the method recipe's train: mapping)", TrainConfig)]
        print("\n".join(describe(m, extra, width=shutil.get_terminal_size().columns - 1)))
        return 0
    rows = [(m.name, m.family, m.arxiv or "–", "yes" if m.needs_calibration else "no", m.title) for m in methods()]
    head = ("name", "family", "arXiv", "calib", "paper")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    for r in [head] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def cmd_bench(a) -> int:
    from efflm.bench import leaderboard, runner, suites
    from efflm.methods import get

    if a.recipe:
        recipes_ = [recipe_arg(p) for p in a.recipe]
    elif a.methods:
        recipes_ = [[get(n.strip()).config_cls()] for n in a.methods.split(",") if n.strip()]
    else:
        recipes_ = suites.SUITES[a.suite]()
    worker_args = {
        k: getattr(a, k)
        for k in ("seq_len", "windows", "prompt_len", "new_tokens", "reps", "calib_samples", "calib_len", "threads")
    }
    worker_args["device"] = runner.worker_device(a.device, a.executor, a.gpus_per_row)  # before any work
    if a.calib:  # each worker calibrates on it and records its sha256 in the row
        worker_args["calib_file"] = str(Path(a.calib).resolve())
    if a.suite == "tasks" and not (a.recipe or a.methods or a.tasks):
        a.tasks = suites.TASKS_SUITE_TASKS  # the tasks suite scores its rows on tasks
    if a.task_limit and not a.tasks:
        raise EfflmError("--task-limit goes with --tasks")
    if a.tasks:
        from efflm.eval.lm_eval_run import check_tasks

        check_tasks(a.tasks)  # before any row runs; each worker resolves them again
        worker_args["tasks"] = ",".join(str(Path(t.strip()).resolve()) if t.strip().endswith((".yaml", ".yml"))
                                        else t.strip() for t in a.tasks.split(",") if t.strip())  # fmt: skip
        if a.task_limit:
            worker_args["task_limit"] = a.task_limit
    if a.executor != "ray" and (a.address or a.gpus_per_row):
        raise EfflmError("--address and --gpus-per-row go with --executor ray")
    if a.gpus_per_row < 0:
        raise EfflmError(f"--gpus-per-row must be ≥ 0, got {a.gpus_per_row:g}")
    if a.executor == "ray" and a.suite in ("finetune", "recover") and not (a.recipe or a.methods):
        raise EfflmError(f"--suite {a.suite} trains one run after another; --executor ray is for bench rows")
    trains = a.suite in ("finetune", "recover") and not (a.recipe or a.methods)
    if a.calib and trains:
        raise EfflmError(f"--calib goes with bench rows; --suite {a.suite} trains on its own data")
    if a.train_steps is not None and not trains:
        raise EfflmError("--train-steps goes with --suite finetune or --suite recover (the suites that train)")
    opts = runner.BenchOptions(a.model, recipes_, Path(a.db), worker_args, a.executor, a.address, a.gpus_per_row)
    with runner.sigterm_as_interrupt():
        if trains:  # training runs, one process each
            from efflm import trainer

            runner.validate(opts)
            trainer.recovery_suite(a.model, recipes_, Path(a.db), distill=a.suite == "recover", steps=a.train_steps,
                                   device=worker_args["device"])  # fmt: skip
        else:
            runner.bench(opts)
    md, md_path, png = leaderboard.write(Path(a.db), a.model, Path(a.out_dir))
    print(md)
    print(f"wrote {md_path} and {png}")
    return 0


def cmd_leaderboard(a) -> int:
    from efflm.bench import db, leaderboard

    md, md_path, png = leaderboard.write(Path(a.db) if a.db else db.read_default(), a.model, Path(a.out_dir))
    print(md)
    print(f"wrote {md_path} and {png}")
    return 0


def cmd_report(a) -> int:
    from efflm import report
    from efflm.bench import db

    out = report.write(Path(a.db) if a.db else db.read_default(), a.model, Path(a.out))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, self-contained; open it in a browser)")
    return 0


def cmd_compress(a) -> int:
    from efflm.core import recipe as recipes

    out = Path(a.out)
    if out.exists():
        raise EfflmError(f"output exists: {out} (choose another --out)")
    template = None
    from efflm import pipeline
    from efflm.core.device import resolve
    from efflm.io import compressed_tensors, gguf_export

    device = resolve(a.device)
    recipe = recipe_arg(a.recipe)
    pipeline.validate(a.model, recipe, a.calib_samples, a.calib_len, calib_file=a.calib)
    if a.format != "efflm":
        (gguf_export if a.format == "gguf" else compressed_tensors).check_recipe(recipe)
    if a.format == "gguf":
        from efflm.models.sources import gguf_source

        if out.suffix != ".gguf":
            raise EfflmError(f"--format gguf writes one file: --out must end in .gguf, got {out.name}")
        template = gguf_source(a.model)
        gguf_export.check_source(a.model, template)
    elif a.format == "compressed-tensors":
        import importlib.util

        if importlib.util.find_spec("compressed_tensors") is None:
            raise EfflmError(
                "--format compressed-tensors needs the compressed-tensors package (pip install 'efflm[interop]')"
            )
    calib = dict(calib_file=a.calib, device=device)
    if a.format == "efflm" and len(recipe) == 1 and pipeline.streams(a.model, recipe):
        seconds = pipeline.compress_streamed(a.model, recipe, out, a.calib_samples, a.calib_len, **calib)
        per = sorted(seconds.values())[len(seconds) // 2] if seconds else 0.0
        print(f"wrote {out} ({recipes.label(recipe)}, {a.format}; streamed {len(seconds)} layers, {per:.2f} s median)")
        return 0
    model, tok = pipeline.load_and_apply(a.model, recipe, a.calib_samples, a.calib_len, **calib)
    if a.format == "gguf":
        gguf_export.export(model, template, out, tok)
    elif a.format == "compressed-tensors":
        compressed_tensors.export(model, tok, out)
    else:
        from efflm.io.save import save

        save(model, tok, out, recipes.to_yaml(recipe))
    print(f"wrote {out} ({recipes.label(recipe)}, {a.format})")
    return 0


def _load(a, recipe):
    """The model after its recipe, with ``--adapter`` applied unmerged when given."""
    from efflm import pipeline

    if getattr(a, "adapter", None):
        from efflm import trainer

        if a.calib:  # checked before any weights load
            raise EfflmError("--calib goes without --adapter: an adapter's base is calibrated on the built-in text")

        return trainer.load_model(a.model, recipe, a.adapter)
    return pipeline.load_and_apply(a.model, recipe, a.calib_samples, a.calib_len, calib_file=a.calib)


def cmd_eval(a) -> int:
    from efflm import pipeline
    from efflm.core.device import resolve as resolve_device
    from efflm.datasets import text
    from efflm.eval.metrics import model_bytes, perplexity
    from efflm.models.sources import load_tokenizer

    dev = resolve_device(a.device)  # a device that is not there fails first
    recipe = recipe_arg(a.recipe)
    pipeline.validate(a.model, recipe, a.calib_samples, a.calib_len, calib_file=a.calib)
    if a.tasks:
        return _eval_tasks(a, recipe, dev)
    if a.limit or a.chat or a.out:
        raise EfflmError("--limit, --chat and --out go with --tasks")
    source = text.read_text_file(a.text_file) if a.text_file else None
    n = a.seq_len * a.windows
    tok = load_tokenizer(a.model)
    ids = text.prefix_tokens(tok, source, n) if source is not None else text.eval_tokens(tok, n)
    if ids.numel() < a.seq_len:
        raise EfflmError(
            f"text too short: {ids.numel()} tokens, need at least one window of {a.seq_len} "
            "(lower --seq-len or give more text)"
        )
    model, tok = _load(a, recipe)
    r = perplexity(model.to(dev), ids, seq_len=a.seq_len, n_windows=a.windows)
    where = a.text_file or "Shakespeare evaluation split"
    print(
        f"ppl {r['ppl']:.3f} over {r['eval_tokens']} tokens ({r['windows']} windows of {r['seq_len']}) "
        f"of {where}; model bytes {model_bytes(model) / 1e6:.1f} MB"
    )
    return 0


def _eval_tasks(a, recipe, dev) -> int:
    from efflm.core.atomic import atomic_write_text, check_target
    from efflm.eval import lm_eval_run

    names, extra = lm_eval_run.check_tasks(a.tasks)
    if a.text_file:
        raise EfflmError("--text-file is for perplexity; tasks bring their own data")
    if a.out:
        check_target(Path(a.out))
    model, tok = _load(a, recipe)
    scores = lm_eval_run.run_tasks(
        model.to(dev), tok, names, limit=a.limit, batch_size=a.batch_size, chat=a.chat, extra=extra
    )
    from efflm.eval.offline_tasks import RANDOM_BASELINE

    print("| task | metric | value | ± stderr | random baseline |")
    print("|---|---|---|---|---|")
    for task, m in scores.items():
        name, value, err = lm_eval_run.headline(m)
        base = RANDOM_BASELINE.get(task)
        print(f"| {task} | {name} | {value:.4f} | {err or 0:.4f} | {'' if base is None else f'{base:.2f}'} |")
    if a.out:
        atomic_write_text(Path(a.out), json.dumps({"model": a.model, "recipe": a.recipe, "adapter": a.adapter,
                                                   "limit": a.limit, "scores": scores}, indent=1))  # fmt: skip
        print(f"wrote {a.out}")
    return 0


def cmd_lm_eval(a) -> int:
    from efflm.eval import lm_eval_run

    return lm_eval_run.cli(a.args)


def cmd_generate(a) -> int:
    from efflm.core.device import resolve as resolve_device
    from efflm.eval.metrics import bandwidth_gbs, bytes_read_per_token
    from efflm.inference.generate import SamplingConfig, generate
    from efflm.inference.speculative import check_compatible, first_layers, speculative_generate

    dev = resolve_device(a.device)  # a device that is not there fails first
    cfg = SamplingConfig(
        max_new_tokens=a.max_new_tokens,
        temperature=a.temperature,
        top_k=a.top_k,
        top_p=a.top_p,
        stop=tuple(a.stop or ()),
        seed=a.seed,
    )
    speculative = a.draft_model or a.draft_layers or a.prompt_lookup
    if speculative and len(a.prompt) > 1:
        raise EfflmError("speculative decoding runs one prompt at a time")
    from efflm import pipeline

    recipe, draft_recipe = recipe_arg(a.recipe), recipe_arg(a.draft_recipe)
    if a.draft_model:  # the draft's recipe and vocabulary are checked before the target's weights load
        from efflm.models.sources import model_config

        pipeline.validate(a.draft_model, draft_recipe, a.calib_samples, a.calib_len, calib_file=a.calib)
        check_compatible(model_config(a.model), model_config(a.draft_model))
    compressor.check(a, None)
    model, tok = _load(a, recipe)
    if a.compress_prompt:
        from efflm.data_methods.prompt_parts import n_tokens

        fn = compressor.prompt_compressor(a, model, tok, own_copy=False)
        short = [fn(p) for p in a.prompt]
        before, after = sum(n_tokens(tok, p) for p in a.prompt), sum(n_tokens(tok, p) for p in short)
        print(f"efflm: {fn.label}: prompt {before} → {after} tokens", file=sys.stderr)
        a.prompt = short
    model, draft = model.to(dev), None  # after the prompt compressor's CPU passes
    if a.draft_model:
        draft, draft_tok = pipeline.load_and_apply(
            a.draft_model, draft_recipe, a.calib_samples, a.calib_len, calib_file=a.calib
        )
        check_compatible(model, draft, tok, draft_tok)
        draft = draft.to(dev)
    elif a.draft_layers:
        draft = first_layers(model, a.draft_layers)

    def show(i: int, delta: str) -> None:
        if len(a.prompt) == 1:
            sys.stdout.write(delta)
            sys.stdout.flush()

    stats = None
    if speculative:
        res, timing, stats = speculative_generate(
            model, tok, a.prompt[0], cfg, draft=draft, chat=a.chat, k=a.k, max_len=a.max_len, on_text=show,
            min_ngram=a.min_ngram, adaptive=not a.fixed_k,
        )  # fmt: skip
        results = [res]
    else:
        from efflm.inference.engine import Engine

        results, timing = generate(
            model,
            tok,
            a.prompt,
            cfg,
            chat=a.chat,
            max_len=a.max_len,
            on_text=show,
            engine=Engine(model, compile=a.compile),
        )
    if len(a.prompt) > 1:
        for i, r in enumerate(results):
            print(f"[{i}] {r.text}")
    else:
        print()
    n = sum(len(r.tokens) for r in results)
    line = f"{n} tokens; decode {timing.tok_s:.1f} tok/s per sequence"
    if dev.type == "cpu":  # the ceiling: this CPU's memory bandwidth over the bytes a token reads
        ceiling = bandwidth_gbs() * 1e9 / bytes_read_per_token(model)
        line += f", {timing.tok_s / ceiling * 100:.0f}% of the bandwidth ceiling ({ceiling:.0f} tok/s)"
    line += f"; TTFT {timing.ttft_s * 1000:.0f} ms"
    if stats is not None:
        line += f"; drafted {stats.proposed}, accepted {stats.acceptance:.0%}, {stats.target_steps} target steps"
    print(line, file=sys.stderr)
    return 0


def cmd_serve(a) -> int:
    import socket

    from efflm import pipeline

    if not 0 < a.port < 65536:
        raise EfflmError(f"--port must be in 1..65535, got {a.port}")
    a.max_n = min(4, a.max_batch) if a.max_n is None else a.max_n
    if a.prefix_cache_mb < 0:
        raise EfflmError(f"--prefix-cache-mb must be ≥ 0, got {a.prefix_cache_mb}")
    if a.max_n > a.max_batch:
        raise EfflmError(f"--max-n ({a.max_n}) cannot exceed --max-batch ({a.max_batch}): n completions take n rows")
    recipe = recipe_arg(a.recipe)
    pipeline.validate(a.model, recipe, a.calib_samples, a.calib_len, calib_file=a.calib)
    named = served_adapters(a)  # NAME=DIR ones checked here, before any weights load
    try:  # a busy port or unknown host is a user error, found before the model loads
        with socket.socket(socket.AF_INET6 if ":" in a.host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((a.host, a.port))
    except OSError as e:
        raise EfflmError(f"cannot listen on {a.host}:{a.port}: {e.strerror or e}") from None
    compressor.check(a, a.model)
    model, tok = _load(a, recipe)
    adapters = named_adapters(model, a, recipe, named) if named is not None else None
    compress = compressor.prompt_compressor(a, model, tok, own_copy=True) if a.compress_prompt else None
    ctx = getattr(model.config, "max_position_embeddings", None) or 2048
    max_len = min(a.max_len or min(ctx, 2048), ctx)
    from efflm import serve

    def ready(server) -> None:
        print(f"efflm: serving {a.served_model_name or a.model} on http://{a.host}:{a.port} "
              f"(max batch {a.max_batch}, {max_len} tokens per sequence)", file=sys.stderr, flush=True)  # fmt: skip

    serve.run(
        model,
        tok,
        a.served_model_name or a.model,
        host=a.host,
        port=a.port,
        max_batch=a.max_batch,
        max_queue=a.max_queue,
        max_len=max_len,
        chunk=a.chunk,
        decode_chunk=a.decode_chunk,
        max_n=a.max_n,
        prefix_cache_mb=a.prefix_cache_mb,
        api_key=a.api_key,
        drain_s=a.drain_timeout,
        on_ready=ready,
        compress=compress,
        adapters=adapters,
    )
    return 0
