"""``efflm papers ...``: import, lint, search, render, add, suggest-eval."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from efflm.catalog import lint as linter
from efflm.catalog import store
from efflm.core.defaults import REFERENCE_DB
from efflm.core.errors import EfflmError

DEFAULT_SEED = Path("../shared/seed/000_690c9ae7716e6f54.txt")


def _method_papers() -> dict[str, list[str]]:
    from efflm.methods import methods

    out: dict[str, list[str]] = {}
    for m in methods():
        out.setdefault(m.paper, []).append(m.name)
    return out


def _load_clean(path: str) -> store.Catalog:
    """The catalog, refusing to work on one that does not lint."""
    cat = store.load(path)
    problems = linter.lint(cat)
    if problems:
        raise EfflmError(f"{path}: {len(problems)} catalog problems (see `efflm papers lint`); first: {problems[0]}")
    return cat


def cmd_import(a) -> int:
    from efflm.catalog.seed_import import import_file

    seed = Path(a.seed)
    if not seed.is_file():
        raise EfflmError(f"seed list not found: {seed}")
    cat = store.from_doc(import_file(seed, _method_papers()))
    path = store.save(cat, a.file)
    print(
        f"wrote {path}: {len(cat.entries)} entries, {len(cat.merged)} duplicate groups merged, "
        f"{sum(e['type'] != 'paper' for e in cat.entries)} non-papers"
    )
    return 0


def cmd_lint(a) -> int:
    import yaml

    cat = store.load(a.file, check_schema=False)
    doc = yaml.safe_load(Path(a.file).read_text(encoding="utf-8"))
    problems = linter.lint(cat, doc, online=a.online)
    for p in problems:
        print(f"{a.file}: {p}")
    if problems:
        return 1
    print(f"{a.file}: ok ({len(cat.entries)} entries, {len(cat.taxonomy)} categories)")
    return 0


def cmd_search(a) -> int:
    from efflm.catalog.render import search

    hits = search(store.load(a.file), " ".join(a.text), a.category, a.implemented, a.year)
    for e in hits:
        impl = f"  [efflm: {', '.join(e['implemented_by'])}]" if e["implemented_by"] else ""
        print(f"{e['id']:40s} {e['year'] or '':4}  {e['title']}{impl}")
    print(f"{len(hits)} matching entries")
    return 0


def cmd_render(a) -> int:
    from efflm.catalog.render import best_rows, render
    from efflm.core.atomic import atomic_write_text

    cat = _load_clean(a.file)
    out = atomic_write_text(Path(a.out), render(cat, best_rows(Path(a.db), a.model)))
    print(f"wrote {out}")
    return 0


def cmd_add(a) -> int:
    from efflm.catalog.seed_import import ARXIV_RE, _same, make_id
    from efflm.catalog.suggest import suggest

    cat = _load_clean(a.file)
    arxiv = a.arxiv or next((m.group(1) for m in [ARXIV_RE.search(a.url or "")] if m), None)
    entry = {
        "id": "",
        "type": a.type,
        "title": a.title.strip(),
        "venue": a.venue,
        "year": a.year,
        "arxiv": arxiv,
        "url": a.url,
        "code": a.code,
        "categories": list(a.category or []),
        "implemented_by": [],
        "datasets": [],
        "benchmarks": [],
        "source": "added",
    }
    for other in cat.entries:
        if _same(other, entry):
            raise EfflmError(f"duplicates existing entry {other['id']!r}: {other['title']}")
    backend, ranked = suggest(cat.entries, f"{a.title}. {a.abstract or ''}", a.backend)
    if not entry["categories"]:
        entry["categories"] = [ranked[0][0]] if ranked else []
    entry["id"] = a.id or make_id(entry["title"], arxiv, {e["id"] for e in cat.entries})
    cat.entries.append(entry)
    mine = [p for p in linter.content_problems(cat) if p.startswith(f"{entry['id']}:")]
    if mine:
        raise EfflmError(mine[0])
    store.save(cat, a.file)
    print(f"added {entry['id']} in {', '.join(entry['categories'])}")
    print(f"suggested categories ({backend}): " + ", ".join(f"{c} ({s:.2f})" for c, s in ranked[:3]))
    return 0


def cmd_suggest_eval(a) -> int:
    from efflm.catalog.suggest import leave_one_out

    r = leave_one_out(store.load(a.file).entries, a.backend, a.k)
    print(
        f"{r['backend']}: leave-one-out top-1 category accuracy {r['accuracy']:.3f} over {r['entries']} entries "
        f"(k={r['k']}); majority-class baseline ({r['majority_category']}) {r['majority_accuracy']:.3f}"
    )
    return 0


def _year(v: str) -> int:
    if not re.fullmatch(r"\d{4}", v):
        raise argparse.ArgumentTypeError(f"expected a 4-digit year, got {v!r}")
    return int(v)


def _positive(v: str) -> int:
    if not re.fullmatch(r"\d+", v) or int(v) <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v!r}")
    return int(v)


def add_parser(sub) -> None:
    p = sub.add_parser("papers", help="the survey's paper catalog: lint, search, render, add")
    p.add_argument("--file", default=str(store.DEFAULT_PATH), help="catalog YAML file")
    ps = p.add_subparsers(dest="papers_cmd", required=True, metavar="SUBCOMMAND")

    i = ps.add_parser("import", help="(re)build the catalog from the survey's Markdown list")
    i.add_argument("seed", nargs="?", default=str(DEFAULT_SEED), help="the survey's Markdown paper list")
    i.set_defaults(fn=cmd_import)

    li = ps.add_parser("lint", help="validate the catalog; one line per problem, non-zero exit on any")
    li.add_argument("--online", action="store_true", help="also check every link over HTTP")
    li.set_defaults(fn=cmd_lint)

    s = ps.add_parser("search", help="find entries by title words, category, year")
    s.add_argument("text", nargs="*", help="words that must all appear in the title")
    s.add_argument("--category", help="only entries under this category path")
    s.add_argument("--implemented", action="store_true", help="only entries efflm implements")
    s.add_argument("--year", type=_year, help="only entries of this year")
    s.set_defaults(fn=cmd_search)

    r = ps.add_parser("render", help="write docs/papers.md")
    r.add_argument("--out", default="docs/papers.md", help="Markdown file written")
    r.add_argument(
        "--db", default=REFERENCE_DB, help="results database (opened read-only; default: the committed reference)"
    )
    r.add_argument("--model", default="smollm2-135m", help="whose measured rows to link")
    r.set_defaults(fn=cmd_render)

    ad = ps.add_parser("add", help="append a validated entry; suggests categories from similar entries")
    ad.add_argument("--title", required=True, help="the paper's title")
    ad.add_argument("--abstract", help="abstract (improves category suggestions)")
    ad.add_argument("--url", help="paper link")
    ad.add_argument("--code", help="code link")
    ad.add_argument("--arxiv", help="arXiv id, e.g. 2210.17323")
    ad.add_argument("--venue", help="publication venue")
    ad.add_argument("--year", type=_year, help="publication year")
    ad.add_argument("--id", help="entry id (default: made from the title)")
    ad.add_argument("--type", default="paper", choices=store.TYPES, help="kind of entry")
    ad.add_argument("--category", action="append", help="category path (default: the top suggestion)")
    ad.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "minilm", "tfidf"],
        help="category suggester (auto: MiniLM embeddings if installed, else TF-IDF)",
    )
    ad.set_defaults(fn=cmd_add)

    ev = ps.add_parser("suggest-eval", help="leave-one-out accuracy of the category suggester")
    ev.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "minilm", "tfidf"],
        help="category suggester (auto: MiniLM embeddings if installed, else TF-IDF)",
    )
    ev.add_argument("--k", type=_positive, default=5, help="neighbours voting on each entry's category")
    ev.set_defaults(fn=cmd_suggest_eval)
