"""``efflm papers lint``: every problem of the catalog, one line each."""

from __future__ import annotations

import re
import urllib.request
from urllib.parse import urlparse

from efflm.catalog.seed_import import norm_title
from efflm.catalog.store import KNOWN_VENUES, TYPES, Catalog, schema_problems

ARXIV_ID = re.compile(r"^\d{4}\.\d{4,5}$")


def _url_ok(url: str) -> bool:
    p = urlparse(url)
    return p.scheme in ("http", "https") and "." in p.netloc and " " not in url


def content_problems(cat: Catalog) -> list[str]:
    problems = []
    categories = {t["path"] for t in cat.taxonomy}
    for path in categories:
        parent = path.rpartition("/")[0]
        if parent and parent not in categories:
            problems.append(f"taxonomy: {path!r} has no parent {parent!r}")
    seen_ids: set[str] = set()
    seen_titles: dict[str, str] = {}
    for e in cat.entries:
        eid = e["id"]
        if eid in seen_ids:
            problems.append(f"{eid}: duplicate id")
        seen_ids.add(eid)
        if not re.match(r"^[a-z0-9][a-z0-9-]*$", eid):
            problems.append(f"{eid}: id must be lowercase letters, digits and dashes")
        key = norm_title(e["title"])
        if key in seen_titles:
            problems.append(f"{eid}: duplicate title of {seen_titles[key]}")
        seen_titles.setdefault(key, eid)
        if e["type"] not in TYPES:
            problems.append(f"{eid}: unknown type {e['type']!r} (known: {', '.join(TYPES)})")
        if not e["categories"]:
            problems.append(f"{eid}: no category")
        problems += [f"{eid}: unknown category {c!r}" for c in e["categories"] if c not in categories]
        for field in ("url", "code"):
            if e[field] is not None and not _url_ok(e[field]):
                problems.append(f"{eid}: {field} is not an http(s) URL: {e[field]!r}")
        if e["code"] and ("doi.org" in e["code"] or "arxiv.org" in e["code"]):
            problems.append(f"{eid}: code link points at a paper, not code: {e['code']}")
        if e["arxiv"] is not None and not ARXIV_ID.match(e["arxiv"]):
            problems.append(f"{eid}: malformed arXiv id {e['arxiv']!r} (expected YYMM.NNNNN)")
        if e["venue"] is not None and e["venue"] not in KNOWN_VENUES:
            problems.append(f"{eid}: unknown venue {e['venue']!r}")
        if e["year"] is not None and not 1950 <= e["year"] <= 2100:
            problems.append(f"{eid}: implausible year {e['year']}")
    return problems


def registry_problems(cat: Catalog) -> list[str]:
    """Every registered method names an entry that names it back; every implemented_by is registered."""
    from efflm.methods import methods

    registered = {m.name: m for m in methods()}
    entries = cat.by_id()
    problems = []
    for m in registered.values():
        entry = entries.get(m.paper)
        if entry is None:
            problems.append(f"method {m.name}: names catalog entry {m.paper!r}, which does not exist")
            continue
        if m.name not in entry["implemented_by"]:
            problems.append(f"{entry['id']}: implemented_by lacks registered method {m.name!r}")
        if m.arxiv and entry["arxiv"] != m.arxiv:
            problems.append(f"method {m.name}: arXiv {m.arxiv} but its entry {entry['id']} says {entry['arxiv']}")
    for e in cat.entries:
        for name in e["implemented_by"]:
            if name not in registered:
                problems.append(f"{e['id']}: implemented_by names unregistered method {name!r}")
            elif registered[name].paper != e["id"]:
                problems.append(f"{e['id']}: method {name!r} is registered for entry {registered[name].paper!r}")
    return problems


def online_problems(cat: Catalog, timeout: float = 10.0) -> list[str]:  # pragma: no cover - needs a network
    problems = []
    for e in cat.entries:
        for field in ("url", "code"):
            if not e[field]:
                continue
            try:
                req = urllib.request.Request(e[field], method="HEAD", headers={"User-Agent": "efflm-lint"})
                urllib.request.urlopen(req, timeout=timeout)
            except Exception as err:  # any failure is a dead link from the reader's point of view
                problems.append(f"{e['id']}: {field} unreachable ({type(err).__name__}): {e[field]}")
    return problems


def lint(cat: Catalog, doc: dict | None = None, online: bool = False) -> list[str]:
    problems = schema_problems(doc if doc is not None else cat.to_doc())
    if problems:
        return problems
    problems = content_problems(cat) + registry_problems(cat)
    return problems + (online_problems(cat) if online else [])
