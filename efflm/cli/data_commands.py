"""``efflm data ...``: data-centric methods on JSONL files (JSONL in, JSONL out, atomic; a report
printed and saved as JSON beside the output)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from efflm.cli.compressor import COMPRESSORS, compressor_config, load_scorer, ratio
from efflm.core.atomic import atomic_write_text
from efflm.core.errors import EfflmError
from efflm.core.progress import progress
from efflm.datasets import jsonl


def _fraction(v: str) -> float:
    try:
        x = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {v!r}") from None
    if not 0 < x <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {v}")
    return x


def _int_at_least(lo: int):
    def parse(v: str) -> int:
        try:
            x = int(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {v!r}") from None
        if x < lo:
            raise argparse.ArgumentTypeError(f"must be ≥ {lo}, got {v}")
        return x

    return parse


def report_path(a) -> Path:
    return Path(a.report) if a.report else Path(a.out).with_name(Path(a.out).name + ".report.json")


def _prepare(a, reads: str = "text") -> tuple[int, Path, Path]:
    """Every check before any work: the input parses (first bad line named), outputs are writable."""
    out = jsonl.check_output(a.out, [a.input])
    rep = jsonl.check_output(report_path(a), [a.input, a.out])
    if rep == out:
        raise EfflmError("--report must differ from --out")
    return jsonl.check_input(a.input, a.field, reads), out, rep


def _finish(rep: Path, report: dict, lines: list[str]) -> int:
    atomic_write_text(rep, json.dumps(report, indent=2) + "\n")
    print("\n".join(lines + [f"report: {rep}"]))
    return 0


def cmd_dedup(a) -> int:
    from efflm.data_methods.dedup import DedupConfig, Deduplicator

    cfg = DedupConfig(
        mode=a.method, threshold=a.threshold, num_perm=a.num_perm, ngram=a.ngram, seed=a.seed, bands=a.bands
    )
    n, out, rep = _prepare(a)
    d = Deduplicator(cfg)
    clusters: dict[int, list[int]] = {}
    t0 = time.perf_counter()

    def kept_rows():
        for i, (row, text) in enumerate(progress(jsonl.iter_rows(a.input, a.field), "dedup", total=n)):
            rep_index = d.add(text)
            if rep_index is None:
                yield row
            else:
                clusters.setdefault(rep_index, []).append(i)

    kept = jsonl.write_rows(out, kept_rows())
    seconds = time.perf_counter() - t0
    report = {
        "command": "dedup",
        "config": cfg.to_dict(),
        "input": str(a.input),
        "output": str(out),
        "rows_in": n,
        "rows_out": kept,
        "removed": n - kept,
        "clusters": [{"kept": k, "removed": v} for k, v in sorted(clusters.items())],
        "seconds": round(seconds, 3),
        "rows_per_s": round(n / seconds, 1) if seconds > 0 else None,
    }
    lines = [
        f"{cfg.label()}: {n} rows in, {kept} kept, {n - kept} removed in {len(clusters)} clusters "
        f"({report['rows_per_s']} rows/s)",
        f"wrote {out}",
    ]
    return _finish(rep, report, lines)


SELECTORS = {"dsir": "dsir", "ppl_filter": "ppl_filter", "ifd": "ifd", "random": "random_select"}


def _select_config(a):
    from efflm.methods import config_from_dict, get

    name = SELECTORS[a.method]
    fields = {"seed": a.seed, "keep": a.keep, "max_len": a.max_len}
    known = {f for f in get(name).config_cls.__dataclass_fields__}
    if a.keep is not None and "keep" not in known:
        raise EfflmError(f"--keep is for ppl_filter, not {a.method}")
    if a.target and name != "dsir":
        raise EfflmError(f"--target is for dsir, not {a.method}")
    if name == "dsir" and not a.target:
        raise EfflmError("dsir needs a target sample: --target FILE.jsonl")
    return config_from_dict({"method": name, **{k: v for k, v in fields.items() if k in known and v is not None}})


def cmd_select(a) -> int:
    from efflm.data_methods.budget import rows_for_fraction, select
    from efflm.data_methods.context import DataContext

    cfg = _select_config(a)
    reads = getattr(cfg, "reads", "text")
    pairs = reads == "pair"
    n, out, rep = _prepare(a, reads)
    target = []
    if a.target:
        jsonl.check_input(a.target, a.target_field)
        target = [t for _, t in jsonl.iter_rows(a.target, a.target_field)]
    needs_model = cfg.method in ("ppl_filter", "ifd")
    tok = None
    if needs_model or a.budget_tokens:
        _, tok = load_scorer(a.model, a.recipe, weights=False)  # a model that cannot load fails here
    items = [t for _, t in jsonl.iter_rows(a.input, a.field, reads)]
    texts = ["\n".join(t) if pairs else t for t in items]
    costs = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts] if tok is not None else None
    if a.budget_tokens and a.budget_tokens > sum(costs):
        raise EfflmError(f"--budget-tokens {a.budget_tokens} is larger than the input ({sum(costs)} tokens)")
    ctx = DataContext(target=target)
    if needs_model:
        ctx.model, ctx.tokenizer = load_scorer(a.model, a.recipe, weights=True)
    t0 = time.perf_counter()
    from efflm.methods import get

    scores = get(cfg.method).apply(items, cfg, ctx)
    if a.budget_tokens:
        kept = select(scores, costs=costs, max_cost=a.budget_tokens)
    else:
        kept = select(scores, k=rows_for_fraction(n, a.budget))
    keep = set(kept)
    written = jsonl.write_rows(
        out, (row for i, (row, _) in enumerate(jsonl.iter_rows(a.input, a.field, reads)) if i in keep)
    )
    seconds = time.perf_counter() - t0
    words_in = sum(len(t.split()) for t in texts)
    words_out = sum(len(texts[i].split()) for i in kept)
    report = {
        "command": "select",
        "config": cfg.to_dict(),
        "model": a.model if needs_model else None,
        "recipe": a.recipe if needs_model else None,
        "input": str(a.input),
        "output": str(out),
        "budget": {"fraction": a.budget} if not a.budget_tokens else {"tokens": a.budget_tokens},
        "rows_in": n,
        "rows_out": written,
        "words_in": words_in,
        "words_out": words_out,
        "tokens_in": sum(costs) if costs else None,
        "tokens_out": sum(costs[i] for i in kept) if costs else None,
        "kept": kept,
        "scores": scores,
        "seconds": round(seconds, 3),
    }
    lines = [f"{cfg.label()}: {n} rows in, {written} kept ({words_out} of {words_in} words)", f"wrote {out}"]
    return _finish(rep, report, lines)


def cmd_compress_prompt(a) -> int:
    from efflm.data_methods.context import DataContext
    from efflm.data_methods.prompt_parts import PromptParts, n_tokens
    from efflm.methods import get

    cfg = compressor_config(a.method, a.ratio, a.unit, a.keep)
    n, out, rep = _prepare(a, "prompt")
    model, tok = load_scorer(a.model, a.recipe, weights=a.method != "truncate")
    rows = list(jsonl.iter_rows(a.input, a.field, "prompt"))
    prompts = [PromptParts(*p) for _, p in rows]
    t0 = time.perf_counter()
    compressed = get(cfg.method).apply(progress(prompts, "compressing", total=n), cfg, DataContext(model, tok))
    seconds = time.perf_counter() - t0
    before = [n_tokens(tok, p.join()) for p in prompts]
    after = [n_tokens(tok, c) for c in compressed]
    jsonl.write_rows(out, ({**row, "compressed_prompt": c} for (row, _), c in zip(rows, compressed)))
    report = {
        "command": "compress-prompt",
        "config": cfg.to_dict(),
        "model": a.model,
        "recipe": a.recipe,
        "input": str(a.input),
        "output": str(out),
        "rows": n,
        "tokens_in": before,
        "tokens_out": after,
        "ratio_achieved": round(sum(before) / max(1, sum(after)), 3),
        "over_budget": [i for i, (b, x) in enumerate(zip(before, after)) if x > b // cfg.ratio],
        "seconds": round(seconds, 3),
    }
    lines = [f"{cfg.label()}: {n} prompts, {sum(before)} → {sum(after)} tokens ({report['ratio_achieved']}×)",
             f"wrote {out}"]  # fmt: skip
    return _finish(rep, report, lines)


def _labelled(path: str, labels: list[str], required: bool) -> list[tuple[dict, str, str | None]]:
    """(row, text, label) of a classification file; a label outside ``labels`` names its line."""
    jsonl.check_input(path)
    out = []
    for n, (row, text) in enumerate(jsonl.iter_rows(path), 1):
        label = row.get("label")
        if label is None and not required:
            out.append((row, text, None))
            continue
        if not isinstance(label, str) or label not in labels:
            raise EfflmError(f"{path}: row {n}: label {label!r} is not one of --labels {','.join(labels)}")
        out.append((row, text, label))
    return out


def cmd_icl(a) -> int:
    from efflm.data_methods.calibrate_before_use import ContextualCalibrationConfig
    from efflm.data_methods.context import DataContext
    from efflm.data_methods.icl import Template, predict
    from efflm.methods import config_from_dict, get

    labels = [x.strip() for x in a.labels.split(",") if x.strip()]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise EfflmError(f"--labels needs at least two distinct labels, got {a.labels!r}")
    name = {"kate": "kate", "random": "random_demos"}[a.select]
    cfg = config_from_dict(
        {"method": name, "k": a.k, **({"backend": a.backend} if name == "kate" else {"seed": a.seed})}
    )
    n, out, rep = _prepare(a)
    tests = _labelled(a.input, labels, required=False)
    pool = _labelled(a.pool, labels, required=True)
    if a.k > len(pool):
        raise EfflmError(f"--k {a.k} is more than the pool's {len(pool)} rows")
    model, tok = load_scorer(a.model, a.recipe, weights=True)
    pool_pairs = [(t, lab) for _, t, lab in pool]
    queries = [t for _, t, _ in tests]
    t0 = time.perf_counter()
    demos = get(name).apply(queries, cfg, DataContext(pool=[t for t, _ in pool_pairs]))
    calibration = ContextualCalibrationConfig() if a.calibrate else None
    template = Template(a.input_prefix, a.label_prefix)
    probs = predict(model, tok, queries, demos, pool_pairs, labels, template, calibration)
    preds = [labels[max(range(len(labels)), key=lambda j: p[j])] for p in probs]
    seconds = time.perf_counter() - t0
    jsonl.write_rows(out, ({**row, "demonstrations": d, "prediction": y, "probs": dict(zip(labels, p))}
                           for (row, _, _), d, y, p in zip(tests, demos, preds, probs)))  # fmt: skip
    gold = [(y, lab) for y, (_, _, lab) in zip(preds, tests) if lab is not None]
    acc = sum(y == lab for y, lab in gold) / len(gold) if gold else None
    report = {
        "command": "icl",
        "select": cfg.to_dict(),
        "calibrate": a.calibrate,
        "model": a.model,
        "recipe": a.recipe,
        "labels": labels,
        "rows": n,
        "scored": len(gold),
        "accuracy": acc,
        "predicted": {lab: preds.count(lab) for lab in labels},
        "seconds": round(seconds, 3),
    }
    acc_text = f", accuracy {acc:.3f} on {len(gold)} labelled rows" if acc is not None else ""
    lines = [f"{cfg.label()}{' + contextual calibration' if a.calibrate else ''}: {n} rows{acc_text}", f"wrote {out}"]
    return _finish(rep, report, lines)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="JSONL file: one JSON object per line")
    p.add_argument("--out", required=True, help="JSONL file written (atomically)")
    p.add_argument("--field", default="text", help="the text field (else prompt/completion or messages)")
    p.add_argument("--report", help="report JSON (default: OUT.report.json)")


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="data-centric methods on JSONL: dedup, select, compress-prompt, icl")
    ps = p.add_subparsers(dest="data_cmd", required=True, metavar="SUBCOMMAND")

    d = ps.add_parser("dedup", help="remove exact or near-duplicate rows (MinHash LSH); keeps first occurrences")
    _common(d)
    d.add_argument("--method", choices=("exact", "minhash"), default="minhash", help="exact: normalized text")
    d.add_argument("--threshold", type=_fraction, default=0.8, help="near duplicates: estimated Jaccard ≥ this")
    d.add_argument("--num-perm", type=_int_at_least(16), default=128, help="MinHash permutations")
    d.add_argument("--ngram", type=_int_at_least(1), default=5, help="word n-gram shingle length")
    d.add_argument("--seed", type=int, default=1, help="MinHash seed")
    d.add_argument("--bands", type=_int_at_least(0), default=0, help="LSH bands (0: chosen for the threshold)")
    d.set_defaults(fn=cmd_dedup)

    s = ps.add_parser("select", help="keep a budget of rows: DSIR, perplexity filtering, IFD, or random")
    _common(s)
    s.add_argument("--method", choices=tuple(SELECTORS), required=True, help="the selector")
    b = s.add_mutually_exclusive_group(required=True)
    b.add_argument("--budget", type=_fraction, help="fraction of the rows kept, in (0, 1]")
    b.add_argument("--budget-tokens", type=_int_at_least(1), help="tokens kept (--model's tokenizer)")
    s.add_argument("--target", help="dsir: JSONL sample of the target domain")
    s.add_argument("--target-field", default="text", help="the target sample's text field")
    s.add_argument(
        "--model", default="smollm2-135m", help="ppl_filter/ifd: the scoring model; its tokenizer counts tokens"
    )
    s.add_argument("--recipe", help="ppl_filter/ifd: compress the scoring model first (a cheap scorer)")
    s.add_argument(
        "--keep", choices=("low", "middle", "high"), help="ppl_filter: which perplexities are kept (default low)"
    )
    s.add_argument("--max-len", type=_int_at_least(4), help="ppl_filter/ifd: tokens scored per row (default 512)")
    s.add_argument("--seed", type=int, help="dsir/random: the seed (default 0)")
    s.set_defaults(fn=cmd_select)

    c = ps.add_parser("compress-prompt", help="shorten prompts' contexts: Selective Context, LLMLingua, truncation")
    _common(c)
    c.add_argument("--method", choices=COMPRESSORS, default="llmlingua", help="the compressor")
    c.add_argument("--ratio", type=ratio, default=2.0, help="the prompt's tokens ÷ the compressed prompt's (≥ 1)")
    c.add_argument(
        "--model", default="smollm2-135m", help="the small LM that scores tokens (its tokenizer counts them)"
    )
    c.add_argument("--recipe", help="compress the small LM first (e.g. a 4-bit copy of the target)")
    c.add_argument(
        "--unit", choices=("word", "sentence"), help="selective_context: the units dropped (default sentence)"
    )
    c.add_argument(
        "--keep", choices=("start", "end"), help="truncate: which end of the context is kept (default start)"
    )
    c.set_defaults(fn=cmd_compress_prompt)

    i = ps.add_parser(
        "icl", help="in-context classification: demonstrations by KATE or at random, optionally calibrated"
    )
    i.add_argument("input", help="JSONL of inputs: text (and label, to score accuracy)")
    i.add_argument("--out", required=True, help="JSONL written: each row + demonstrations, prediction, probs")
    i.add_argument("--report", help="report JSON (default: OUT.report.json)")
    i.add_argument("--pool", required=True, help="JSONL of labelled examples (text, label) to draw demonstrations from")
    i.add_argument("--labels", required=True, help="comma-separated label words")
    i.add_argument("--select", choices=("kate", "random"), default="kate", help="how demonstrations are chosen")
    i.add_argument("--k", type=_int_at_least(0), default=4, help="demonstrations per input")
    i.add_argument("--calibrate", action="store_true", help="contextual calibration (content-free inputs)")
    i.add_argument("--backend", choices=("auto", "minilm", "tfidf"), default="auto", help="kate: the encoder")
    i.add_argument("--seed", type=int, default=0, help="random: the seed")
    i.add_argument("--model", default="smollm2-135m", help="the model that classifies")
    i.add_argument("--recipe", help="recipe applied to the model first")
    i.add_argument("--input-prefix", default="Input: ", help="text before each input")
    i.add_argument("--label-prefix", default="Label:", help="text before each label (labels follow a space)")
    i.set_defaults(fn=cmd_icl, field="text")
