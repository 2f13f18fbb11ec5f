"""``efflm report``: the results database as one self-contained interactive HTML page.

The page embeds the current rows (the leaderboard's: latest per recipe, current measurement
version) and Plotly's offline bundle, so it opens from a ``file://`` URL with nothing fetched:
a quality-vs-cost chart (x selectable: model bytes, decode tok/s, TTFT, peak RSS, each task's
accuracy; y perplexity; colour by family; hover: method, settings, paper; the Pareto front of
the chosen axes drawn) and a sortable, filterable table with short method labels (the full
recipe on hover or expanded), each row linked to its paper and to the file implementing it.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path
from typing import Any

from efflm.core.errors import EfflmError

REPO_URL_ROOT = "../"  # the report lives in results/: file links are relative to the checkout


def _methods_of(stored: str) -> list[str]:
    from efflm.core.recipe import from_stored

    return [s["method"] for s in from_stored(stored)[0]]


def rows_for(db_path: Path, model: str) -> list[dict[str, Any]]:
    """The leaderboard's rows of ``model`` as plain records for the page."""
    from efflm.bench import db as results
    from efflm.bench.leaderboard import dense_row, latest, short_label, task_scores
    from efflm.catalog.render import method_files
    from efflm.methods import get

    conn = results.open_readonly(db_path)
    cur, _ = results.current(results.rows(conn, model))
    rows = [r for r in latest(cur) if r["status"] == "ok"]
    if not rows:
        raise EfflmError(f"no current results for model {model!r} in {db_path} (run `efflm bench --model {model}`)")
    ref = dense_row(rows)
    files = method_files()
    out = []
    for r in rows:
        papers, links = [], []
        for name in _methods_of(r["recipe"]):
            m = get(name)
            papers.append({"title": m.title, "url": f"https://arxiv.org/abs/{m.arxiv}" if m.arxiv else None})
            if name in files:
                links.append({"name": files[name], "url": REPO_URL_ROOT + files[name]})
        out.append(
            {
                "label": short_label(r["label"]),
                "full": r["label"],
                "recipe": r["recipe"],
                "family": r["families"] or "",
                "ppl": r["ppl"],
                "dppl": (r["ppl"] / ref["ppl"] - 1) * 100 if ref else None,
                "mb": r["bytes"] / 1e6 if r["bytes"] else None,
                "tok_s": r["tok_s"],
                "ttft_ms": r["ttft_ms"],
                "rss_mb": r["peak_rss_mb"],
                "tasks": {t: s["value"] for t, s in task_scores(r).items()},
                "papers": papers,
                "files": links,
                "commit": r.get("commit_id"),
            }
        )
    return out


def page(model: str, rows: list[dict[str, Any]]) -> str:
    """The HTML page: the template with the rows and Plotly's bundle inlined."""
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise EfflmError("efflm report needs plotly (pip install plotly)") from None
    template = resources.files("efflm.report").joinpath("template.html").read_text(encoding="utf-8")
    tasks = sorted({t for r in rows for t in r["tasks"]})
    data = json.dumps({"model": model, "rows": rows, "tasks": tasks}).replace("</", "<\\/")
    return (
        template.replace("/*PLOTLY*/", get_plotlyjs().replace("</script", "<\\/script"))
        .replace("/*DATA*/", data)
        .replace("{{MODEL}}", html.escape(model))
    )


def write(db_path: Path, model: str, out: Path) -> Path:
    """Write the report atomically; an empty or missing database is an error before anything is written."""
    from efflm.core.atomic import atomic_write_text, check_target

    check_target(out)
    return atomic_write_text(out, page(model, rows_for(db_path, model)))
