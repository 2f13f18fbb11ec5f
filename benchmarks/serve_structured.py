"""Structured output's cost: the grammar engines' time per token mask, and efflm's batched decode
speed with a JSON schema against the same streams without one.

    python benchmarks/serve_structured.py [--model smollm2-135m] [--streams 8] [--new 64]
        [--rounds 3] [--threads 2]

Engines: llguidance (what ``efflm serve`` uses) and xgrammar (``make anchors``; its column is
left out if it is not installed), each compiling the same nested JSON schema against the
model's tokenizer and walking the same valid document token by token; per round, compile time
and the median time to compute one step's mask over the whole vocabulary (the token is then
consumed, untimed). Decode: the model as ``benchmarks/serve_load.py`` serves it (RTN W4 g32, int8
embeddings, bf16: the fused C decode step), the
batcher in-process on the main thread (no HTTP), ``--streams`` greedy requests at once with the same prompt, up to
``--new`` tokens each, with ``response_format`` = the schema (masks computed per row inside the
batch) or free; output tok/s summed over streams, each stream's (tokens − 1) / (last − first
token time); rounds interleave the two; median. Writes ``results/serve_structured.md``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "email": {"type": "string", "maxLength": 40},
        "skills": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 4},
        "address": {
            "type": "object",
            "properties": {"street": {"type": "string", "maxLength": 30}, "city": {"type": "string", "maxLength": 20}},
            "required": ["street", "city"],
        },
    },
    "required": ["name", "age", "email", "skills", "address"],
}
DOC = {"name": "Ada Lovelace", "age": 36, "email": "ada@example.org", "skills": ["math", "poetry", "engines"],
       "address": {"street": "12 St James's Square", "city": "London"}}  # fmt: skip
PROMPT = "Describe a famous scientist as a JSON object with name, age, email, skills and address:\n"


def llguidance_walk(tok, vocab: int, ids: list[int]) -> tuple[float, list[float]]:
    import llguidance
    import llguidance.torch as lt

    from efflm.inference.grammar import _tokenizer, compile_grammar

    _tokenizer(tok, vocab)  # the tokenizer wrapper is built once per server, not per request
    t0 = time.perf_counter()
    grammar = compile_grammar(tok, vocab, "json_schema", SCHEMA)
    m = llguidance.LLMatcher(_tokenizer(tok, vocab), grammar)
    compiled = time.perf_counter() - t0
    bitmask, steps = lt.allocate_token_bitmask(1, vocab), []
    for t in ids:
        t1 = time.perf_counter()
        lt.fill_next_token_bitmask(m, bitmask, 0)
        steps.append(time.perf_counter() - t1)
        assert m.consume_token(t), m.get_error()
    return compiled, steps


def xgrammar_walk(tok, vocab: int, ids: list[int], info) -> tuple[float, list[float]]:
    import xgrammar as xgr

    t0 = time.perf_counter()
    compiled_grammar = xgr.GrammarCompiler(info, cache_enabled=False).compile_json_schema(json.dumps(SCHEMA))
    m = xgr.GrammarMatcher(compiled_grammar)
    compiled = time.perf_counter() - t0
    bitmask, steps = xgr.allocate_token_bitmask(1, vocab), []
    for t in ids:
        t1 = time.perf_counter()
        m.fill_next_token_bitmask(bitmask)
        steps.append(time.perf_counter() - t1)
        assert m.accept_token(t)
    return compiled, steps


def serve_at_once(b, specs: list[dict], new: int) -> list:
    """Submit one greedy ``Request(**spec)`` of up to ``new`` tokens per spec at once, then step the
    batcher ``b`` on this thread (as `efflm serve` steps the model on its main thread) until every
    one has finished; the finished requests."""
    from efflm.inference.generate import SamplingConfig
    from efflm.serve.batcher import Request

    left, finished = [len(specs)], threading.Event()

    def emit(kind, value) -> None:
        if kind != "text":
            left[0] -= 1  # the batcher's one thread calls this
            if not left[0]:
                finished.set()

    reqs = [Request(sampling=SamplingConfig(max_new_tokens=new), emit=emit, **spec) for spec in specs]
    for r in reqs:
        b.submit(r)
    b.run_here(finished.is_set)
    return reqs


def decode_rate(model, tok, streams: int, new: int, grammar: str | None) -> tuple[float, float]:
    """(output tok/s summed over streams, mean tokens per stream) for one batch of greedy streams."""
    from efflm.serve.batcher import Batcher

    b = Batcher(model, tok, max_batch=streams, max_len=512)
    ids = tok(PROMPT)["input_ids"]
    reqs = serve_at_once(b, [dict(ids=ids, grammar=grammar)] * streams, new)
    rates = [(len(r.gen.tokens) - 1) / (r.t_last - r.t_first) for r in reqs if len(r.gen.tokens) > 1]
    return sum(rates), statistics.mean(len(r.gen.tokens) for r in reqs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "results" / "serve_structured.md"))
    args = ap.parse_args(argv)
    import torch

    from efflm.core import recipe as recipes
    from efflm.core.atomic import publish
    from efflm.inference.grammar import compile_grammar
    from efflm.pipeline import load_and_apply

    torch.set_num_threads(args.threads)
    from serve_load import RECIPE  # the load test's file: RTN W4 g32, int8 embeddings, bf16 (the packed kernels)

    model, tok = load_and_apply(args.model, recipes.from_yaml(RECIPE))
    vocab = model.config.vocab_size
    doc = tok(json.dumps(DOC, separators=(",", ":")), add_special_tokens=False)["input_ids"]
    engines = {"llguidance": lambda: llguidance_walk(tok, vocab, doc)}
    try:
        import xgrammar as xgr

        info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab)
        engines["xgrammar"] = lambda: xgrammar_walk(tok, vocab, doc, info)
    except ImportError:
        pass
    grammar = compile_grammar(tok, vocab, "json_schema", SCHEMA)
    masks = {k: [] for k in engines}
    compiles = {k: [] for k in engines}
    rates: dict[str, list] = {"free": [], "json schema": []}
    lengths: dict[str, list] = {"free": [], "json schema": []}
    for walk in engines.values():  # warm-up
        walk()
    decode_rate(model, tok, args.streams, 8, None)
    for _ in range(args.rounds):
        for name, walk in engines.items():
            c, steps = walk()
            compiles[name].append(c)
            masks[name].append(statistics.median(steps))
        for mode, g in (("free", None), ("json schema", grammar)):
            rate, n = decode_rate(model, tok, args.streams, args.new, g)
            rates[mode].append(rate)
            lengths[mode].append(n)
    rows = {
        "engines": {k: (statistics.median(compiles[k]), statistics.median(masks[k])) for k in engines},
        "decode": {k: (statistics.median(rates[k]), statistics.mean(lengths[k])) for k in rates},
    }
    print(json.dumps(rows, indent=1), file=sys.stderr)
    return publish(Path(args.out), table(args, rows, len(doc), vocab))


def table(args, rows: dict, doc_tokens: int, vocab: int) -> str:
    import platform

    import torch

    cmd = "python benchmarks/serve_structured.py" + "".join(f" {a}" for a in map(shlex.quote, sys.argv[1:]))
    versions = {}
    for pkg in ("llguidance", "xgrammar"):
        try:
            from importlib.metadata import version

            versions[pkg] = version(pkg)
        except Exception:
            pass
    free = rows["decode"]["free"][0]
    lines = [
        "# Structured output: grammar engines' cost per token, and decode speed with a JSON schema",
        "",
        f"Regenerate: `{cmd}`. Machine: {torch.get_num_threads()} threads, {platform.machine()}; "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + f". Model: {args.model} as the load test serves it (RTN W4 g32, int8 embeddings, bf16), vocabulary {vocab}. "
        "Schema: a nested object "
        f"(strings, an integer, an array, an inner object); the engines walk one valid {doc_tokens}-token document. "
        f"Decode: {args.streams} greedy streams at once in efflm's batcher, up to {args.new} tokens each, median of "
        f"{args.rounds} interleaved rounds.",
        "",
        "| grammar engine | compile ms | mask per token µs (median) |",
        "|---|---|---|",
    ]
    for name, (c, m) in rows["engines"].items():
        lines.append(f"| {name} | {c * 1e3:.2f} | {m * 1e6:.1f} |")
    lines += [
        "",
        "| efflm serve decode | output tok/s (sum of streams) | tokens per stream | vs free |",
        "|---|---|---|---|",
    ]
    for mode, (rate, n) in rows["decode"].items():
        lines.append(f"| {mode} | {rate:.1f} | {n:.1f} | {rate / free:.2f}× |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
