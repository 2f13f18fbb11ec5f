"""The ``efflm`` command line: the parser and ``main``; every user error is one line on stderr and
exit code 2. The commands themselves are in ``efflm.cli.commands`` (the training ones in ``train_commands``)."""

from __future__ import annotations

import argparse
import sys

from efflm.cli import commands, train_commands
from efflm.cli.compressor import COMPRESSORS, ratio
from efflm.core import settings
from efflm.core.errors import EfflmError

DEFAULT_MODEL = "smollm2-135m"
SUITE_NAMES = (
    "default",
    "extra",
    "prune",
    "inference",
    "full",
    "finetune",
    "recover",
    "quant2",
    "tasks",
)  # efflm.bench.suites.SUITES (tested)
MODEL_HELP = (
    "smollm2-135m (the default model), tiny-llama, a Hugging Face or efflm model directory, a .gguf file, "
    "or a hub id (org/name) already in the local Hugging Face cache (never downloaded)"
)


class Parser(argparse.ArgumentParser):
    """argparse with efflm's error contract: one line ``efflm: error: ...`` and exit 2, and
    every option's default shown in ``--help``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"efflm: error: {message}\n")


def _positive(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def _common(p: argparse.ArgumentParser, calib: bool = True) -> None:
    from efflm.core.defaults import CALIB_LEN, CALIB_SAMPLES

    p.add_argument("--model", default=DEFAULT_MODEL, help=f"the model: {MODEL_HELP}")
    if calib:
        p.add_argument(
            "--calib-samples",
            type=_positive,
            default=CALIB_SAMPLES,
            help="calibration windows drawn for methods that calibrate",
        )
        p.add_argument("--calib-len", type=_positive, default=CALIB_LEN, help="tokens per calibration window")
        p.add_argument(
            "--calib",
            metavar="FILE",
            help="your own calibration data instead of the built-in text: a .txt file, or .jsonl rows "
            "with 'text' or chat 'messages' (rendered through the model's chat template)",
        )


def _device(p: argparse.ArgumentParser, what: str = "computes") -> None:
    """``--device``: checked by the command before any weights load (``efflm.core.device.resolve``)."""
    p.add_argument(
        "--device",
        default="auto",
        help=f"where the model {what}: auto (the first GPU when torch sees one, else the CPU), cpu, cuda or "
        "cuda:N (efflm's C kernels are the CPU's; on a GPU every module runs its torch path)",
    )


def parser() -> argparse.ArgumentParser:
    from efflm.core.defaults import EVAL_SEQ_LEN, EVAL_WINDOWS, REFERENCE_DB, RUNS_DB, RUNS_DIR

    p = Parser(prog="efflm", description="Compress, run and measure LLM efficiency methods.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    ms = sub.add_parser("methods", help="list registered methods, or show one method's options")
    ms.add_argument(
        "name",
        nargs="?",
        default=argparse.SUPPRESS,
        help="a method's name: its paper, and each option with its type, default and what it does",
    )
    ms.set_defaults(fn=commands.cmd_methods)

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
    b.add_argument("--db", default=RUNS_DB, help="results database (SQLite; created if absent)")
    b.add_argument("--out-dir", default=RUNS_DIR, help="where leaderboard.md and pareto.png are written")
    for name, default, what in (
        ("seq-len", EVAL_SEQ_LEN, "tokens per perplexity window"),
        ("windows", EVAL_WINDOWS, "perplexity windows scored"),
        ("prompt-len", 128, "prompt tokens for the speed measurement"),
        ("new-tokens", 32, "tokens decoded for the speed measurement"),
        ("reps", 2, "timed speed repetitions (median reported)"),
        ("threads", 2, "torch threads in each worker"),
    ):
        b.add_argument(f"--{name}", type=_positive, default=default, help=what)
    b.add_argument(
        "--tasks",
        help="also score each row on these lm-evaluation-harness tasks (comma-separated, "
        "e.g. efflm_nextline); task accuracy becomes leaderboard columns",
    )
    b.add_argument("--task-limit", type=_positive, help="with --tasks: at most this many examples per task")
    b.add_argument(
        "--train-steps",
        type=_positive,
        help="--suite finetune/recover: optimizer steps of each training run (default: the suite's 100)",
    )
    b.add_argument(
        "--executor",
        choices=["subprocess", "ray"],
        default="subprocess",
        help="where rows run: local subprocesses one after another, or Ray tasks (a local Ray "
        "instance, or the cluster at --address)",
    )
    b.add_argument("--address", help="with --executor ray: join the Ray cluster at HOST:PORT")
    b.add_argument("--gpus-per-row", type=float, default=0.0, help="with --executor ray: GPUs each row declares")
    _device(b, "of each row is measured (and trained, --suite finetune/recover)")
    b.set_defaults(fn=commands.cmd_bench)

    lb = sub.add_parser("leaderboard", help="print the leaderboard; write leaderboard.md and pareto.png")
    lb.add_argument("--model", default=DEFAULT_MODEL, help="whose rows to show")
    lb.add_argument(
        "--db",
        help=f"results database, opened read-only (default: {RUNS_DB}, or the committed {REFERENCE_DB} before any run)",
    )
    lb.add_argument("--out-dir", default=RUNS_DIR, help="where leaderboard.md and pareto.png are written")
    lb.set_defaults(fn=commands.cmd_leaderboard)

    rp = sub.add_parser("report", help="the results as one self-contained interactive HTML page")
    rp.add_argument("--model", default=DEFAULT_MODEL, help="whose rows to show")
    rp.add_argument(
        "--db",
        help=f"results database, opened read-only (default: {RUNS_DB}, or the committed {REFERENCE_DB} before any run)",
    )
    rp.add_argument("--out", default=f"{RUNS_DIR}/report.html", help="the HTML file written")
    rp.set_defaults(fn=commands.cmd_report)

    c = sub.add_parser("compress", help="apply a recipe and save the model directory atomically")
    _common(c)
    c.add_argument("--recipe", required=True, help="recipe YAML file")
    c.add_argument("--out", required=True, help="output directory (or .gguf file); must not exist")
    c.add_argument(
        "--format",
        choices=["efflm", "compressed-tensors", "gguf"],
        default="efflm",
        help="efflm directory, compressed-tensors directory (vLLM, transformers), "
        "or a .gguf file (llama.cpp; g32 codes as Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 blocks)",
    )
    _device(c, "calibrates on (each layer streamed there in turn)")
    c.set_defaults(fn=commands.cmd_compress)

    e = sub.add_parser("eval", help="perplexity of a model (optionally after a recipe) on a text")
    _common(e)
    e.add_argument("--recipe", help="recipe YAML file applied first (default: the model as it is)")
    e.add_argument("--text-file", help="any UTF-8 text file (default: the Shakespeare evaluation split)")
    e.add_argument("--seq-len", type=_positive, default=EVAL_SEQ_LEN, help="tokens per window")
    e.add_argument("--windows", type=_positive, default=EVAL_WINDOWS, help="windows scored")
    e.add_argument("--adapter", help="adapter directory (efflm finetune or peft) applied unmerged")
    e.add_argument(
        "--tasks",
        help="lm-evaluation-harness tasks instead of perplexity, comma-separated "
        "(efflm's offline tasks: efflm_cloze, efflm_nextline, efflm_instruct; or any lm-eval task)",
    )
    e.add_argument("--limit", type=_positive, help="with --tasks: at most this many examples per task")
    e.add_argument("--batch-size", type=_positive, default=8, help="with --tasks: rows scored at once")
    e.add_argument("--chat", action="store_true", help="with --tasks: prompts through the chat template")
    e.add_argument("--out", help="with --tasks: also write the scores as JSON here")
    _device(e, "is evaluated (after its recipe)")
    e.set_defaults(fn=commands.cmd_eval)

    le = sub.add_parser(
        "lm-eval",
        help="lm-evaluation-harness's own command line, with --model efflm and "
        "efflm's offline tasks registered (e.g. lm-eval --model efflm --model_args "
        "model=SPEC,recipe=FILE,adapter=DIR --tasks efflm_cloze)",
        add_help=False,
    )
    le.add_argument("args", nargs=argparse.REMAINDER, help="lm_eval's arguments")
    le.set_defaults(fn=commands.cmd_lm_eval)

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
    g.add_argument("--k", type=_positive, default=4, help="the most draft tokens per speculative step")
    g.add_argument("--fixed-k", action="store_true", help="always draft --k tokens (default: follow acceptance)")
    g.add_argument("--min-ngram", type=_positive, default=2, help="prompt lookup: shortest n-gram match drafted")
    g.add_argument("--compress-prompt", type=ratio, help="compress each prompt's context by this ratio first (≥ 1)")
    g.add_argument("--compressor", choices=COMPRESSORS, default="llmlingua", help="the prompt compressor")
    g.add_argument("--compressor-model", help="the compressor's small LM (default: the model itself)")
    g.add_argument("--compressor-recipe", help="recipe applied to the compressor's small LM (e.g. 4-bit)")
    g.add_argument(
        "--compile",
        action="store_true",
        help="experimental: torch.compile each decoder layer (recompiles per layer and turns the fused "
        "decode step off; see docs/methods.md)",
    )
    _device(g, "(and the draft model) decodes")
    g.set_defaults(fn=commands.cmd_generate)

    f = sub.add_parser(
        "finetune",
        help="fine-tune or distill: an adapter in peft's format, or (full-parameter methods) the whole model",
    )
    f.add_argument("--model", default=DEFAULT_MODEL, help=f"the base model: {MODEL_HELP}")
    f.add_argument("--recipe", help="compression recipe applied to the base first (e.g. rtn, llm_pruner)")
    f.add_argument("--method-recipe", required=True, help="YAML: the fine-tuning method's fields and a 'train' mapping")
    f.add_argument(
        "--data", default="domain", help="domain (calibration text), tasks (built-in instruction tasks) or FILE.jsonl"
    )
    f.add_argument("--teacher", help=f"distillation methods (kd, gkd): the teacher, {MODEL_HELP}; same tokenizer")
    f.add_argument("--teacher-recipe", help="recipe applied to the teacher first")
    f.add_argument("--teacher-cache", help="kd: the teacher's top-k log-probabilities from `efflm distill-cache`")
    f.add_argument(
        "--out", required=True, help="output directory (adapter or model/, checkpoints, loss.png); must not exist"
    )
    f.add_argument("--steps", type=_positive, help="optimizer steps (overrides train.steps)")
    f.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    f.add_argument("--db", default=RUNS_DB, help="results database the run's row is written to")
    f.add_argument(
        "--no-eval",
        action="store_true",
        help="skip the final held-out evaluation and so the results row (--db); the adapter or model, the loss "
        "curve and the run's record are written as usual (for a model whose evaluation would outlast its training)",
    )
    _device(f, "and the teacher train (bf16 autocast there by default; under accelerate launch, each process's GPU)")
    f.set_defaults(fn=train_commands.cmd_finetune)

    dc = sub.add_parser(
        "distill-cache",
        help="one teacher pass over a run's batches: top-k log-probabilities for `finetune --teacher-cache`",
    )
    dc.add_argument("--teacher", required=True, help=f"the teacher: {MODEL_HELP}")
    dc.add_argument("--teacher-recipe", help="recipe applied to the teacher first")
    dc.add_argument("--model", default=DEFAULT_MODEL, help="the student (its tokenizer must be the teacher's)")
    dc.add_argument("--method-recipe", required=True, help="the distillation run's method recipe (its 'train' shape)")
    dc.add_argument("--data", default="domain", help="the run's --data")
    dc.add_argument("--steps", type=_positive, help="optimizer steps (overrides train.steps)")
    dc.add_argument("--k", type=_positive, default=64, help="log-probabilities kept per token")
    dc.add_argument("--out", required=True, help="cache file to write; must not exist")
    dc.set_defaults(fn=train_commands.cmd_distill_cache)

    dd = sub.add_parser(
        "distill-data", help="training text written by a teacher: LLM-QAT's data-free text, or sequence-level KD"
    )
    dd.add_argument("--teacher", required=True, help=f"the teacher: {MODEL_HELP}")
    dd.add_argument("--teacher-recipe", help="recipe applied to the teacher first")
    dd.add_argument("--prompts", help="JSONL of {prompt} rows to complete (sequence-level KD); default: data-free text")
    dd.add_argument("--n", type=_positive, default=64, help="data-free rows to write (ignored with --prompts)")
    dd.add_argument("--max-new-tokens", type=_positive, default=128, help="tokens the teacher writes per row at most")
    dd.add_argument(
        "--greedy-first", type=int, default=3, help="data-free: tokens after the random first one taken greedily"
    )
    dd.add_argument("--temperature", type=float, default=1.0, help="sampling temperature after them (0 = greedy)")
    dd.add_argument("--seed", type=int, default=0, help="random first tokens and sampling")
    dd.add_argument("--out", required=True, help="JSONL file to write (for finetune --data); must not exist")
    dd.set_defaults(fn=train_commands.cmd_distill_data)

    m = sub.add_parser("merge", help="fold a LoRA/DoRA/IA3 adapter into the base and save it")
    m.add_argument("--model", default=DEFAULT_MODEL, help=f"the base model: {MODEL_HELP}")
    m.add_argument("--recipe", help="compression recipe the adapter's base was made with")
    m.add_argument("--adapter", required=True, help="adapter directory")
    m.add_argument("--out", required=True, help="output model directory, or a .gguf file (llama.cpp); must not exist")
    m.set_defaults(fn=train_commands.cmd_merge)

    xl = sub.add_parser("export-lora", help="write a LoRA adapter as a llama.cpp LoRA GGUF file (llama.cpp --lora)")
    xl.add_argument("--model", default=DEFAULT_MODEL, help=f"the adapter's base model: {MODEL_HELP}")
    xl.add_argument("--adapter", required=True, help="LoRA adapter directory (efflm finetune or peft)")
    xl.add_argument("--out", required=True, help="output .gguf file; must not exist")
    xl.set_defaults(fn=train_commands.cmd_export_lora)

    s = sub.add_parser("serve", help="an OpenAI-compatible server with continuous batching and a playground at /")
    _common(s)
    s.add_argument("--recipe", help="recipe YAML file applied first")
    s.add_argument(
        "--adapter",
        action="append",
        help="DIR: an adapter (efflm finetune or peft) applied unmerged to every request; or NAME=DIR, repeatable: "
        "a LoRA adapter that requests choose with model=NAME, batched beside the base and each other",
    )
    s.add_argument("--enable-lora", action="store_true",
                   help="allow LoRA adapters loaded at runtime (POST /v1/load_lora_adapter) with no NAME=DIR at start")  # fmt: skip
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback by default)")
    s.add_argument("--port", type=int, default=8000, help="port to listen on")
    s.add_argument("--max-batch", type=_positive, default=8, help="sequences decoded together at most")
    s.add_argument("--max-queue", type=_positive, default=64, help="requests waiting at most; beyond: 429")
    s.add_argument(
        "--max-n", type=_positive, help="completions one request may ask for ('n'); ≤ --max-batch (default: min(4, it))"
    )
    s.add_argument(
        "--max-len", type=_positive, help="tokens per sequence, prompt included (default: min(context, 2048))"
    )
    s.add_argument("--chunk", type=_positive, default=128, help="prompt tokens prefilled per scheduler step")
    s.add_argument("--decode-chunk", type=_positive,
                   help="prompt tokens prefilled per step while other sequences decode, bounding their inter-token "
                   "gap (default: as many as take about one decode step, measured)")  # fmt: skip
    s.add_argument("--prefix-cache-mb", type=float, default=0.0,
                   help="memory for prompts' KV reused by later prompts with the same prefix (0: off)")  # fmt: skip
    s.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 endpoints")
    s.add_argument("--served-model-name", help="the model name clients send (default: --model)")
    s.add_argument("--compress-prompt", type=ratio, help="compress each prompt's context by this ratio first (≥ 1)")
    s.add_argument("--compressor", choices=COMPRESSORS, default="llmlingua", help="the prompt compressor")
    s.add_argument("--compressor-model", help="the compressor's small LM (default: a second copy of --model)")
    s.add_argument("--compressor-recipe", help="recipe applied to the compressor's small LM (e.g. 4-bit)")
    s.add_argument("--drain-timeout", type=float, default=30.0, help="seconds in-flight streams get after SIGTERM")
    s.set_defaults(fn=commands.cmd_serve)

    from efflm.catalog.papers_cli import add_parser as add_papers
    from efflm.cli.data_commands import add_parser as add_data

    add_papers(sub)
    add_data(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["lm-eval"]:  # lm-eval's own options, passed through unparsed
            a = argparse.Namespace(fn=commands.cmd_lm_eval, args=argv[1:])
        else:
            a = parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error, already printed as one line (2)
        return e.code if isinstance(e.code, int) else 2
    try:
        settings.check()  # a bad EFFLM_* value is one line before any work
        return a.fn(a)
    except EfflmError as e:
        print(f"efflm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("efflm: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if settings.debug():
            raise
        print(
            f"efflm: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
            "(set EFFLM_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1
