"""``efflm leaderboard``: the latest row per recipe, as a table, Markdown and a Pareto plot."""

from __future__ import annotations

import json
from pathlib import Path

from efflm.bench import db as results
from efflm.core.atomic import atomic_write_bytes_from, atomic_write_text
from efflm.core.errors import EfflmError
from efflm.models.sources import DEFAULT_MODEL

FOOTNOTES = {
    DEFAULT_MODEL: "SmolLM2-135M-Instruct's float weights are a dequantized Q4_1 GGUF: every decoder "
    "Linear lies exactly on an asymmetric 4-bit grid with groups of 32, so asymmetric "
    "4-bit g32 re-quantization is lossless on it and proves nothing. Rows here use other "
    "group sizes and symmetric grids.",
}


def canonical_label(row) -> str:
    """The row's recipe labelled as today's configs label it: a config field added since the row
    was measured (at its default) does not make the same recipe look like another one."""
    import efflm.methods  # noqa: F401  (every method registered, so any recipe can be read)
    from efflm.core import recipe as recipes

    try:
        return recipes.stored_label(row["recipe"])
    except Exception:  # a recipe today's efflm cannot read (a method since removed): its stored label
        return row["label"]


def latest(rows: list) -> list:
    """Latest row per recipe (a newer failure hides an older success: it is the current state)."""
    by_label: dict[str, object] = {}
    for r in rows:
        key = canonical_label(r)  # parses the stored recipe: once per row
        by_label.pop(key, None)  # re-inserted last: the table keeps measurement order
        by_label[key] = r
    return list(by_label.values())


def dense_row(rows: list):
    from efflm.models.dense import DenseConfig

    ok = [r for r in rows if r["status"] == "ok" and r["label"] == DenseConfig().label()]
    return ok[-1] if ok else None


def _fmt(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def _tok_cell(row) -> str:
    """Decode tok/s with its spread over repetitions, where the row recorded one."""
    spread = row["tok_s_min"] is not None and row["tok_s_max"] is not None
    return f"{row['tok_s']:.1f}" + (f" ({row['tok_s_min']:.1f}–{row['tok_s_max']:.1f})" if spread else "")


def task_scores(row) -> dict:
    """A row's lm-eval task scores (``efflm bench --tasks``): ``{task: {metric, value, stderr}}``."""
    return json.loads(row["extra"] or "{}").get("tasks", {}) if row["status"] == "ok" else {}


def task_columns(rows: list) -> list[tuple[str, str]]:
    """``(task, metric)`` of every task some row was scored on, in order of first appearance."""
    seen: dict[tuple[str, str], None] = {}
    for r in rows:
        for task, s in task_scores(r).items():
            seen[(task, s["metric"])] = None
    return list(seen)


def _task_cell(row, task: str) -> str:
    s = task_scores(row).get(task)
    if not s or s["value"] is None:
        return "–"
    return f"{s['value']:.3f} ± {s['stderr']:.3f}" if s.get("stderr") is not None else f"{s['value']:.3f}"


def table(rows: list) -> tuple[list[str], list[list[str]]]:
    ref = dense_row(rows)
    tasks = task_columns(rows)
    head = [
        "method",
        "family",
        "ppl",
        "Δppl vs dense",
        *(f"{task} {metric}" for task, metric in tasks),
        "MB",
        "× dense",
        "as-sparse MB",
        "disk MB",
        "tok/s (min–max)",
        "% ceiling",
        "HF tok/s",
        "KV KB",
        "TTFT ms",
        "peak RSS MB",
        "status",
    ]
    body = []
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: (r["bytes"], r["ppl"]))
    for r in ok + [r for r in rows if r["status"] != "ok"]:
        good = r["status"] == "ok"
        timed = good and r["tok_s"] is not None
        d_ppl = (r["ppl"] / ref["ppl"] - 1) * 100 if good and ref else None
        ratio = r["bytes"] / ref["bytes"] if good and ref else None
        body.append(
            [
                r["label"],
                r["families"] or "",
                _fmt(r["ppl"], ".2f"),
                "–" if d_ppl is None else f"{d_ppl:+.1f}%",
                *(_task_cell(r, task) for task, _ in tasks),
                _fmt(r["bytes"] and r["bytes"] / 1e6, ".1f"),
                _fmt(ratio, ".3f"),
                _fmt(r["sparse_bytes"] and r["sparse_bytes"] / 1e6, ".1f"),
                _fmt(r["disk_bytes"] and r["disk_bytes"] / 1e6, ".1f"),
                _tok_cell(r) if timed else "–",
                _fmt(r["tok_s"] / r["ceiling_tok_s"] * 100 if timed and r["ceiling_tok_s"] else None, ".0f"),
                _fmt(r["hf_tok_s"], ".1f"),
                _fmt(r["kv_bytes"] and r["kv_bytes"] / 1e3, ".0f"),
                _fmt(r["ttft_ms"], ".0f"),
                _fmt(r["peak_rss_mb"], ".0f"),
                "ok" if good else f"failed: {r['error']}",
            ]
        )
    return head, body


def markdown(model: str, rows: list, stale: list | None = None) -> str:
    head, body = table(rows)
    lines = [
        f"# efflm leaderboard — {model}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in body]
    ok = [r for r in rows if r["status"] == "ok"]
    if ok:
        r = ok[-1]
        env = json.loads(r["env"] or "{}")
        lines += [
            "",
            f"Perplexity: {int(r['eval_tokens'])} evaluation tokens ({int(r['eval_tokens'] / (r['seq_len'] - 1))} "
            f"windows of {int(r['seq_len'])}), Shakespeare evaluation split. Speed: batch 1, greedy, "
            f"median of repetitions, on efflm's static-KV-cache decode path (HF tok/s: transformers "
            f"`generate`, the reference); KV KB: the cache for prompt + new tokens; ceiling = {r['bandwidth_gbs']:.1f} GB/s read bandwidth / bytes per token.",
            f"Environment: {env.get('cpu', '?')}, {env.get('threads', '?')} threads, torch "
            f"{env.get('torch', '?')}, transformers {env.get('transformers', '?')}, "
            f"model hash {r['model_hash']}; measurement version {results.MEASUREMENT}, rows measured at "
            f"efflm commit{'s' if len(commits(ok)) > 1 else ''} {', '.join(commits(ok))}.",
        ]
        if env.get("kernels"):  # rows from before efflm recorded them have none
            k, sets = env["kernels"], env.get("settings", {})
            lines.append(
                f"Kernels: q4 matmul {k.get('q4', '?')}, column sweep {k.get('sweep', '?')}"
                + "".join(f", {n}={v}" for n, v in sets.items())
                + "; each row's decode step (`c` or why `torch`) is in its `env`."
            )
    if stale:
        labels = sorted({r["label"] for r in stale})
        lines += [
            "",
            f"Stale: {len(stale)} older row(s) of {len(labels)} recipe(s), measured with an older "
            f"harness (measurement version < {results.MEASUREMENT}), stay in the database and are not shown.",
        ]
    if task_columns(ok):
        limits = {s.get("limit") for r in ok for s in task_scores(r).values()}
        lines += [
            "",
            "Tasks: lm-evaluation-harness on efflm's forward and decode path (`efflm bench --tasks`), value ± "
            "standard error" + (f", the first {', '.join(str(x) for x in sorted(x for x in limits if x))} examples "
                                "of each task" if limits - {None} else "") + "; random baselines: efflm_cloze 0, "
            "efflm_nextline 0.25, efflm_instruct ~0.",
        ]  # fmt: skip
    if any(r["sparse_bytes"] for r in ok):
        lines += [
            "",
            "as-sparse MB: an estimate for pruned rows, had their zeros been stored as nonzero values plus "
            "a 1-bit mask. Their measured MB and tok/s hold the zeros densely: no sparse speedup is claimed.",
        ]
    fallbacks = [(r["label"], n) for r in ok for n in json.loads(r["extra"] or "{}").get("notes", [])]
    if fallbacks:  # what a method fell back to while it ran (efflm.calib.layerwise.note)
        lines += ["", "Fallbacks:", *(f"- {label}: {n}" for label, n in fallbacks)]
    if model in FOOTNOTES:
        lines += ["", f"Note: {FOOTNOTES[model]}"]
    return "\n".join(lines) + "\n"


def commits(rows: list) -> list[str]:
    """The commits the rows were measured at, in order of first appearance."""
    return list(dict.fromkeys(r.get("commit_id") or json.loads(r["env"] or "{}").get("commit", "?") for r in rows))


def pareto_front(points: list[tuple[float, float]], higher_x_better: bool) -> list[int]:
    """Indices of points no other point beats on both axes (lower y always better)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 >= x if higher_x_better else x2 <= x) and y2 <= y and (x2, y2) != (x, y)
            for j, (x2, y2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return front


_ABBREV = (
    ("bits=", "w"),
    ("group_size=-1", "per-channel"),
    ("group_size=", "g"),
    ("symmetric=True", "sym"),
    ("symmetric=False", "asym"),
    ("act_order=True", "act-order"),
    (",act_order=False", ""),
    (",dampening=0.01", ""),
    (",block_size=128", ""),
    (",n_grid=20", ""),
    (",duo_scaling=False", ""),
    ("duo_scaling=True", "duo"),
    (",clip=True", ""),
    ("clip=False", "no-clip"),
    ("alpha=", "α"),
    ("w8a8()", "w8a8 naive"),
    ("dtype=", ""),
    ("sparsity=0.5,pattern=unstructured", "50%"),
    ("sparsity=0.5,pattern=", ""),
    ("sparsity=", "s"),
    (",pattern=unstructured", ""),
    (",head_ratio=0.0", ""),
    ("head_ratio=", "heads "),
    (",importance=taylor", ""),
    (",multiple_of=32", ""),
    (",grad_len=128", ""),
    (",rank=0", ""),
    (",density=0.02", ""),
    ("ratio=", "r"),
    (",", " "),
    ("(", " "),
    (")", ""),
)


def short_label(label: str) -> str:
    """Compact plot label: ``rtn(bits=4,group_size=64,symmetric=True)`` -> ``rtn w4 g64 sym``."""
    for old, new in _ABBREV:
        label = label.replace(old, new)
    return label


def plot(model: str, rows: list, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    ok = [r for r in rows if r["status"] == "ok"]
    ref = dense_row(rows)
    cap = 20 * (ref["ppl"] if ref else min(r["ppl"] for r in ok))  # rows beyond it are listed, not drawn
    off = sorted((r for r in ok if r["ppl"] > cap), key=lambda r: r["ppl"])
    ok = [r for r in ok if r["ppl"] <= cap]
    fig, axes = plt.subplots(1, 2, figsize=(14, 6))
    families = sorted({r["families"] or "" for r in ok})
    palette = plt.get_cmap("tab10").colors
    colours = {fam: palette[i % len(palette)] for i, fam in enumerate(families)}
    for ax, key, xlabel, higher in (
        (axes[0], "bytes", "model bytes (MB, log)", False),
        (axes[1], "tok_s", "decode tok/s (batch 1)", True),
    ):
        drawn = [r for r in ok if r[key] is not None]
        pts = [((r[key] / 1e6 if key == "bytes" else r[key]), r["ppl"]) for r in drawn]
        front = set(pareto_front(pts, higher))
        for fam in families:  # one colour per family, with a legend; only the front's points are named
            mine = [i for i, r in enumerate(drawn) if (r["families"] or "") == fam]
            ax.scatter([pts[i][0] for i in mine], [pts[i][1] for i in mine], s=[60 if i in front else 28 for i in mine],
                       color=colours[fam], edgecolors=["black" if i in front else "none" for i in mine], zorder=3,
                       label=fam or "(none)")  # fmt: skip
        for n, i in enumerate(sorted(front, key=lambda i: pts[i][0])):
            ax.annotate(short_label(drawn[i]["label"]), pts[i], fontsize=8, xytext=(5, 5 + 9 * (n % 2)),
                        textcoords="offset points")  # fmt: skip
        fx = sorted((pts[i] for i in front), key=lambda p: p[0])
        ax.plot([p[0] for p in fx], [p[1] for p in fx], "--", color="black", alpha=0.5, label="Pareto front")
        if key == "bytes":
            ax.set_xscale("log")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("perplexity (log, lower is better)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="upper right", fontsize=8)
    fig.suptitle(f"efflm — {model}: quality vs cost")
    if off:
        listed = "; ".join(f"{short_label(r['label'])} ({r['ppl']:.0f})" for r in off)
        fig.text(0.01, 0.01, f"Not drawn, perplexity above {cap:.0f} (20x dense): {listed}", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.06 if off else 0, 1, 1))
    try:
        return atomic_write_bytes_from(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)


def write(db_path: Path, model: str, out_dir: Path) -> tuple[str, Path, Path]:
    conn = results.open_readonly(db_path)
    cur, stale = results.current(results.rows(conn, model))
    rows = latest(cur)
    if not rows:
        raise EfflmError(f"no current results for model {model!r} in {db_path} (run `efflm bench --model {model}`)")
    md = markdown(model, rows, stale)
    md_path = atomic_write_text(out_dir / "leaderboard.md", md)
    return md, md_path, plot(model, rows, out_dir / "pareto.png")
