"""The ``efflm`` command line. Every user error is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from efflm.core.errors import EfflmError

DEFAULT_MODEL = "smollm2-135m"
SUITE_NAMES = ("default", "extra", "prune", "inference", "full", "finetune")  # efflm.bench.suites.SUITES (tested)
MODEL_HELP = "smollm2-135m (the default model), tiny-llama, a Hugging Face or efflm model directory, or a .gguf file"


class Parser(argparse.ArgumentParser):
    """argparse with efflm's error contract: one line ``efflm: error: ...`` and exit 2, and
    every option's default shown in ``--help``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"efflm: error: {message}\n")


def _recipe_arg(path: str | None, fallback: str | None = None):
    from efflm.core import recipe as recipes

    if path:
        return recipes.load(path)
    return recipes.from_yaml(fallback) if fallback else []


def cmd_methods(a) -> int:
    from efflm.methods import methods

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
        recipes_ = [_recipe_arg(p) for p in a.recipe]
    elif a.methods:
        recipes_ = [[get(n.strip()).config_cls()] for n in a.methods.split(",") if n.strip()]
    else:
        recipes_ = suites.SUITES[a.suite]()
    worker_args = {
        k: getattr(a, k)
        for k in ("seq_len", "windows", "prompt_len", "new_tokens", "reps", "calib_samples", "calib_len", "threads")
    }
    opts = runner.BenchOptions(a.model, recipes_, Path(a.db), worker_args)
    runner.install_signal_handlers()
    if a.suite == "finetune" and not (a.recipe or a.methods):  # LoRA recovery of each base, one process each
        from efflm import tune

        runner.validate(opts)
        tune.recovery_suite(a.model, recipes_, Path(a.db))
    else:
        runner.bench(opts)
    md, md_path, png = leaderboard.write(Path(a.db), a.model, Path(a.out_dir))
    print(md)
    print(f"wrote {md_path} and {png}")
    return 0


def cmd_leaderboard(a) -> int:
    from efflm.bench import leaderboard

    md, md_path, png = leaderboard.write(Path(a.db), a.model, Path(a.out_dir))
    print(md)
    print(f"wrote {md_path} and {png}")
    return 0


def cmd_compress(a) -> int:
    from efflm.core import recipe as recipes

    out = Path(a.out)
    if out.exists():
        raise EfflmError(f"output exists: {out} (choose another --out)")
    template = None
    from efflm import pipeline
    from efflm.io import compressed_tensors, gguf_export

    recipe = _recipe_arg(a.recipe)
    pipeline.validate(a.model, recipe, a.calib_samples, a.calib_len)
    if a.format != "efflm":
        (gguf_export if a.format == "gguf" else compressed_tensors).check_recipe(recipe)
    if a.format == "gguf":
        from efflm.models.load import gguf_source

        if out.suffix != ".gguf":
            raise EfflmError(f"--format gguf writes one file: --out must end in .gguf, got {out.name}")
        template = gguf_source(a.model)
        if template is None:
            raise EfflmError(
                "GGUF export needs the model's tokenizer metadata from a GGUF file: "
                "supported for models loaded from a .gguf (e.g. the default model)"
            )
    elif a.format == "compressed-tensors":
        import importlib.util

        if importlib.util.find_spec("compressed_tensors") is None:
            raise EfflmError(
                "--format compressed-tensors needs the compressed-tensors package (pip install 'efflm[interop]')"
            )
    model, tok = pipeline.load_and_apply(a.model, recipe, a.calib_samples, a.calib_len)
    if a.format == "gguf":
        gguf_export.export(model, template, out)
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
        from efflm import tune

        return tune.load_model(a.model, recipe, a.adapter)
    return pipeline.load_and_apply(a.model, recipe, a.calib_samples, a.calib_len)


def cmd_eval(a) -> int:
    from efflm import pipeline
    from efflm.data import text
    from efflm.eval.metrics import model_bytes, perplexity
    from efflm.models.load import load_tokenizer

    recipe = _recipe_arg(a.recipe)
    pipeline.validate(a.model, recipe, a.calib_samples, a.calib_len)
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
    r = perplexity(model, ids, seq_len=a.seq_len, n_windows=a.windows)
    where = a.text_file or "Shakespeare evaluation split"
    print(
        f"ppl {r['ppl']:.3f} over {r['eval_tokens']} tokens ({r['windows']} windows of {r['seq_len']}) "
        f"of {where}; model bytes {model_bytes(model) / 1e6:.1f} MB"
    )
    return 0


def cmd_generate(a) -> int:
    from efflm.eval.metrics import bandwidth_gbs, bytes_read_per_token
    from efflm.inference.generate import SamplingConfig, generate
    from efflm.inference.speculative import check_compatible, first_layers, speculative_generate

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

    recipe, draft_recipe = _recipe_arg(a.recipe), _recipe_arg(a.draft_recipe)
    if a.draft_model:  # the draft's recipe and vocabulary are checked before the target's weights load
        from efflm.models.load import model_config

        pipeline.validate(a.draft_model, draft_recipe, a.calib_samples, a.calib_len)
        check_compatible(model_config(a.model), model_config(a.draft_model))
    model, tok = _load(a, recipe)
    draft = None
    if a.draft_model:
        draft, draft_tok = pipeline.load_and_apply(a.draft_model, draft_recipe, a.calib_samples, a.calib_len)
        check_compatible(model, draft, tok, draft_tok)
    elif a.draft_layers:
        draft = first_layers(model, a.draft_layers)

    def show(i: int, delta: str) -> None:
        if len(a.prompt) == 1:
            sys.stdout.write(delta)
            sys.stdout.flush()

    stats = None
    if speculative:
        res, timing, stats = speculative_generate(
            model, tok, a.prompt[0], cfg, draft=draft, chat=a.chat, k=a.k, max_len=a.max_len, on_text=show
        )
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
    ceiling = bandwidth_gbs() * 1e9 / bytes_read_per_token(model)
    n = sum(len(r.tokens) for r in results)
    line = (
        f"{n} tokens; decode {timing.tok_s:.1f} tok/s per sequence, {timing.tok_s / ceiling * 100:.0f}% of the "
        f"bandwidth ceiling ({ceiling:.0f} tok/s); TTFT {timing.ttft_s * 1000:.0f} ms"
    )
    if stats is not None:
        line += f"; drafted {stats.proposed}, accepted {stats.acceptance:.0%}, {stats.target_steps} target steps"
    print(line, file=sys.stderr)
    return 0


def cmd_finetune(a) -> int:
    from efflm import tune

    cfg, train_cfg = tune.read_method_recipe(a.method_recipe, a.steps)
    r = tune.finetune(a.model, _recipe_arg(a.recipe), cfg, train_cfg, a.data, a.out, resume=a.resume, db=a.db)
    shown = {k: v for k, v in r.items() if k not in ("losses", "evals")}
    print(
        f"wrote {a.out} ({cfg.label()}): "
        + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
    )
    return 0


def cmd_merge(a) -> int:
    from efflm import tune

    r = tune.merge(a.model, _recipe_arg(a.recipe), a.adapter, a.out)
    print(f"wrote {a.out}: {r['note']}")
    return 0


def _positive(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def _common(p: argparse.ArgumentParser, calib: bool = True) -> None:
    from efflm.pipeline import CALIB_LEN, CALIB_SAMPLES

    p.add_argument("--model", default=DEFAULT_MODEL, help=f"the model: {MODEL_HELP}")
    if calib:
        p.add_argument(
            "--calib-samples",
            type=_positive,
            default=CALIB_SAMPLES,
            help="calibration windows drawn for methods that calibrate",
        )
        p.add_argument("--calib-len", type=_positive, default=CALIB_LEN, help="tokens per calibration window")


def parser() -> argparse.ArgumentParser:
    from efflm.eval.metrics import EVAL_SEQ_LEN, EVAL_WINDOWS

    p = Parser(prog="efflm", description="Compress, run and measure LLM efficiency methods.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    sub.add_parser("methods", help="list registered methods").set_defaults(fn=cmd_methods)

    b = sub.add_parser("bench", help="benchmark recipes side by side, one subprocess each")
    _common(b)
    b.add_argument("--recipe", action="append", help="recipe YAML file (repeatable; overrides --methods/--suite)")
    b.add_argument("--methods", help="comma-separated method names, each at its default config")
    b.add_argument(
        "--suite",
        choices=list(SUITE_NAMES),
        default="default",
        help="the recipes benchmarked when neither --recipe nor --methods is given",
    )
    b.add_argument("--db", default="results/efflm.sqlite", help="results database (SQLite; created if absent)")
    b.add_argument("--out-dir", default="results", help="where leaderboard.md and pareto.png are written")
    for name, default, what in (
        ("seq-len", EVAL_SEQ_LEN, "tokens per perplexity window"),
        ("windows", EVAL_WINDOWS, "perplexity windows scored"),
        ("prompt-len", 128, "prompt tokens for the speed measurement"),
        ("new-tokens", 32, "tokens decoded for the speed measurement"),
        ("reps", 2, "timed speed repetitions (median reported)"),
        ("threads", 2, "torch threads in each worker"),
    ):
        b.add_argument(f"--{name}", type=_positive, default=default, help=what)
    b.set_defaults(fn=cmd_bench)

    lb = sub.add_parser("leaderboard", help="print the leaderboard; write leaderboard.md and pareto.png")
    lb.add_argument("--model", default=DEFAULT_MODEL, help="whose rows to show")
    lb.add_argument("--db", default="results/efflm.sqlite", help="results database (opened read-only)")
    lb.add_argument("--out-dir", default="results", help="where leaderboard.md and pareto.png are written")
    lb.set_defaults(fn=cmd_leaderboard)

    c = sub.add_parser("compress", help="apply a recipe and save the model directory atomically")
    _common(c)
    c.add_argument("--recipe", required=True, help="recipe YAML file")
    c.add_argument("--out", required=True, help="output directory (or .gguf file); must not exist")
    c.add_argument(
        "--format",
        choices=["efflm", "compressed-tensors", "gguf"],
        default="efflm",
        help="efflm directory, compressed-tensors directory (vLLM, transformers), "
        "or a .gguf file (llama.cpp; symmetric 4/8-bit g32 codes as Q4_0/Q8_0)",
    )
    c.set_defaults(fn=cmd_compress)

    e = sub.add_parser("eval", help="perplexity of a model (optionally after a recipe) on a text")
    _common(e)
    e.add_argument("--recipe", help="recipe YAML file applied first (default: the model as it is)")
    e.add_argument("--text-file", help="any UTF-8 text file (default: the Shakespeare evaluation split)")
    e.add_argument("--seq-len", type=_positive, default=EVAL_SEQ_LEN, help="tokens per window")
    e.add_argument("--windows", type=_positive, default=EVAL_WINDOWS, help="windows scored")
    e.add_argument("--adapter", help="adapter directory (efflm finetune or peft) applied unmerged")
    e.set_defaults(fn=cmd_eval)

    g = sub.add_parser("generate", help="generate text on efflm's decode path, streaming; prints tok/s")
    g.add_argument("prompt", nargs="+", help="one or more prompts (several: one left-padded batch)")
    _common(g)
    g.add_argument("--recipe", help="recipe YAML file applied first")
    g.add_argument("--adapter", help="adapter directory (efflm finetune or peft) applied unmerged")
    g.add_argument("--max-new-tokens", type=_positive, default=128, help="tokens to generate at most")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = off)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass, in (0, 1]")
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--seed", type=int, help="sampling seed (default: nondeterministic)")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    g.add_argument("--max-len", type=_positive, help="KV-cache length (default: prompt + new tokens)")
    g.add_argument("--draft-model", help="speculative decoding with this draft model (same tokenizer)")
    g.add_argument("--draft-recipe", help="recipe applied to the draft model (e.g. prune + 4-bit)")
    g.add_argument("--draft-layers", type=_positive, help="speculative decoding drafting with the first N layers")
    g.add_argument("--prompt-lookup", action="store_true", help="speculative decoding with prompt lookup")
    g.add_argument("--k", type=_positive, default=4, help="draft tokens per speculative step")
    g.add_argument(
        "--compile",
        action="store_true",
        help="experimental: torch.compile each decoder layer (measured slower here: it recompiles "
        "per layer; see docs/results.md)",
    )
    g.set_defaults(fn=cmd_generate)

    f = sub.add_parser("finetune", help="train a parameter-efficient adapter; write it in peft's format")
    f.add_argument("--model", default=DEFAULT_MODEL, help=f"the base model: {MODEL_HELP}")
    f.add_argument("--recipe", help="compression recipe applied to the base first (e.g. rtn, llm_pruner)")
    f.add_argument("--method-recipe", required=True, help="YAML: the fine-tuning method's fields and a 'train' mapping")
    f.add_argument(
        "--data", default="domain", help="domain (calibration text), tasks (built-in instruction tasks) or FILE.jsonl"
    )
    f.add_argument("--out", required=True, help="output directory (adapter, checkpoints, loss.png); must not exist")
    f.add_argument("--steps", type=_positive, help="optimizer steps (overrides train.steps)")
    f.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    f.add_argument("--db", default="results/efflm.sqlite", help="results database the run's row is written to")
    f.set_defaults(fn=cmd_finetune)

    m = sub.add_parser("merge", help="fold a LoRA/DoRA/IA3 adapter into the base and save it")
    m.add_argument("--model", default=DEFAULT_MODEL, help=f"the base model: {MODEL_HELP}")
    m.add_argument("--recipe", help="compression recipe the adapter's base was made with")
    m.add_argument("--adapter", required=True, help="adapter directory")
    m.add_argument("--out", required=True, help="output model directory; must not exist")
    m.set_defaults(fn=cmd_merge)

    from efflm.catalog.commands import add_parser as add_papers

    add_papers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        a = parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error, already printed as one line (2)
        return e.code if isinstance(e.code, int) else 2
    try:
        return a.fn(a)
    except EfflmError as e:
        print(f"efflm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("efflm: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("EFFLM_DEBUG"):
            raise
        print(
            f"efflm: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
            "(set EFFLM_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
