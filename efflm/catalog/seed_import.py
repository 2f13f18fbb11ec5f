"""Turn the survey's hand-edited Markdown list into catalog records — run once, then reviewed.

Parsing rules: the ``##``..``####`` headings give each entry its category path; a line
``- Title, <ins>Venue, Year</ins> [[Paper](url)] [[Code](url)]`` gives the fields (bare
titles, ``Title (venue year)``, ``Name: url`` and ``[Name](url)`` lines are understood
too, and a link broken across lines is joined). Venues are normalized through
``VENUE_ALIASES``; arXiv ids come from arxiv.org and DOI links; a "code" link that is a
DOI is moved to the paper fields. Entries with the same arXiv id or a near-identical
title (also with an ``Acronym:`` prefix dropped) are merged, keeping every category.
Deterministic: the same seed gives the same records.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from efflm.catalog.seed_additions import ADDED_CATEGORIES, ADDED_ENTRIES, ADDED_TAXONOMY, DATASETS, ENRICH, KNOWN_ARXIV

SKIP_SECTIONS = {"what is efficient llm about?", "table of content", "todo (05/10/2023)"}
VENUE_ALIASES = {
    "arxiv": "arXiv",
    "neurlps": "NeurIPS",
    "nips": "NeurIPS",
    "neurips": "NeurIPS",
    "neurlps-enlsp": "NeurIPS Workshop (ENLSP)",
    "iclrw": "ICLR Workshop",
    "kddw": "KDD Workshop",
    "naccl": "NAACL",
    "github": "GitHub",
    "published in tacl": "TACL",
}
STOP = {"a", "an", "the", "of", "for", "and", "to", "in", "on", "with", "via", "is", "are", "by", "from"}
ARXIV_RE = re.compile(r"(?:arxiv\.org/(?:abs|pdf)/+|10\.48550/arXiv\.)(\d{4}\.\d{4,5})", re.I)
LINK_RE = re.compile(r"\[\[(paper|code)\]\(\s*([^)\s]+)\s*\)", re.I)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def norm_title(title: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", title.lower()).split())


def title_keys(title: str) -> set[str]:
    """The normalized title, and the part after an ``Acronym:`` prefix."""
    keys = {norm_title(title)}
    head, sep, rest = title.partition(":")
    if sep and len(head.split()) <= 3 and len(rest.split()) >= 4:
        keys.add(norm_title(rest))
    return keys


def make_id(title: str, arxiv: str | None, taken: set[str]) -> str:
    head, sep, rest = title.partition(":")
    if sep and len(head.split()) <= 3 and len(head) <= 25 and rest.strip():
        base = slug(head)
    else:
        words = [w for w in norm_title(title).split() if w not in STOP]
        base = "-".join(words[:6]) or "entry"
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}-{n}", n + 1
    taken.add(candidate)
    return candidate


def venue_of(raw: str) -> str | None:
    raw = raw.strip().rstrip(",").strip()
    return VENUE_ALIASES.get(raw.lower(), raw) or None


def _logical_lines(text: str) -> list[str]:
    """Join a continuation line (a link broken across lines) onto its entry."""
    out: list[str] = []
    for line in text.splitlines():
        s = line.rstrip()
        if out and s and not s.lstrip().startswith(("-", "#", "*")) and out[-1].lstrip().startswith(("-", "*")):
            out[-1] += s.strip()
        else:
            out.append(s)
    return out


def _parse_line(body: str) -> dict[str, Any]:
    rec: dict[str, Any] = {"links": {k.lower(): v for k, v in LINK_RE.findall(body)}}
    m = re.match(r"^\[(.+?)\]\((\S+?)\)$", body)
    if m:
        return {**rec, "title": m.group(1), "homepage": m.group(2)}
    if re.match(r"^https?://\S+$", body):
        return {**rec, "title": body.rstrip("/").split("/")[-1], "homepage": body}
    ins = re.search(r"<ins>\s*(.*?)\s*</ins>", body)
    if ins:
        title = body[: ins.start()]
        parts = ins.group(1).rsplit(",", 1)
        year = re.search(r"\d{4}", parts[-1])
        rec["venue"] = venue_of(parts[0] if year and len(parts) == 2 else ins.group(1))
        rec["year"] = int(year.group()) if year else None
    else:
        title = body.split("[[")[0]
        m = re.match(r"^(.+?)\s*\((.+)\)$", title.strip())
        named = re.match(r"^(.+?):\s*(https?://\S+)$", title.strip())
        if named and not m:
            return {**rec, "title": re.sub(r"\s+Awesome$", "", named.group(1)), "homepage": named.group(2)}
        if m:
            title, note = m.group(1), m.group(2)
            gh = re.match(r"^github:\s*(\S+)$", note, re.I)
            if gh:
                rec["links"]["code"], rec["venue"] = gh.group(1), "GitHub"
            else:
                vy = re.search(r"([A-Za-z][A-Za-z ]*?)\s+(\d{4})", note)
                if vy:
                    rec["venue"], rec["year"] = venue_of(vy.group(1)), int(vy.group(2))
    rec["title"] = re.sub(r"\s+Awesome$", "", title.strip().rstrip(",").strip())  # a badge's alt text
    return rec


def _type_of(rec: dict, section: str) -> str:
    if section.startswith("efficient-framework"):
        return "framework"
    url = rec.get("homepage") or rec["links"].get("code") or ""
    if "leaderboard" in (rec["title"] + url).lower():
        return "leaderboard"
    if rec.get("venue") == "Google Blog":
        return "resource"
    if (rec.get("venue") == "GitHub" and "paper" not in rec["links"]) or ("homepage" in rec and "github.com" in url):
        return "repository"
    if "homepage" in rec:
        return "resource"
    return "paper"


def parse(seed_text: str) -> tuple[list[dict], list[dict], list[dict]]:
    """(taxonomy, raw records in seed order, fixes applied)."""
    taxonomy: list[dict] = []
    stack: list[tuple[int, str]] = []
    records, fixes = [], []
    skipping = True
    for line in _logical_lines(seed_text):
        h = re.match(r"^(#{2,4})\s+(.*?)\s*$", line)
        if h:
            level, name = len(h.group(1)), h.group(2)
            skipping = name.lower() in SKIP_SECTIONS
            if skipping:
                continue
            name = "Surveys" if name.startswith("Survey and Perspective") else name
            stack = [(lvl, s) for lvl, s in stack if lvl < level] + [(level, slug(name))]
            path = "/".join(s for _, s in stack)
            if path not in {t["path"] for t in taxonomy}:
                taxonomy.append({"path": path, "title": name})
            continue
        if skipping or not stack or not re.match(r"^\s*[-*]\s+", line):
            continue
        body = re.sub(r"^\s*[-*]\s+", "", line).strip()
        rec = _parse_line(body)
        rec["category"] = "/".join(s for _, s in stack)
        code = rec["links"].get("code", "")
        if "doi.org" in code or "arxiv.org" in code:
            fixes.append({"title": rec["title"], "fix": f"code link {code} is a paper DOI: moved to the paper fields"})
            rec["links"].pop("code")
            rec["links"].setdefault("doi", code)
        records.append(rec)
    return taxonomy, records, fixes


def _record(rec: dict) -> dict:
    links = rec["links"]
    arxiv = next(
        (
            m.group(1)
            for u in (links.get("paper", ""), links.get("doi", ""), rec.get("homepage", ""))
            for m in [ARXIV_RE.search(u)]
            if m
        ),
        None,
    )
    out = {
        "type": _type_of(rec, rec["category"]),
        "title": rec["title"],
        "venue": rec.get("venue"),
        "year": rec.get("year"),
        "arxiv": arxiv,
        "url": links.get("paper") or rec.get("homepage"),
        "code": links.get("code"),
        "categories": [rec["category"]],
    }
    out.update(ENRICH.get(norm_title(out["title"]), {}))
    if out["venue"] == "GitHub" and out["type"] == "paper" and out["arxiv"]:
        out["venue"] = "arXiv"  # a paper with an arXiv preprint, listed under its repository
    if out["year"] is None and out["arxiv"]:
        out["year"] = 2000 + int(out["arxiv"][:2])
    if out["type"] == "repository" and out["url"] and not out["code"] and "github.com" in out["url"]:
        out["code"], out["url"] = out["url"], None
    return out


def _richness(r: dict) -> int:
    return sum(bool(r.get(k)) for k in ("arxiv", "url", "code", "venue", "year"))


def _same(a: dict, b: dict) -> str | None:
    if a["arxiv"] and a["arxiv"] == b["arxiv"]:
        return "same arXiv id"
    na, nb = norm_title(a["title"]), norm_title(b["title"])
    if na == nb:
        return "same normalized title"
    if na in title_keys(b["title"]) or nb in title_keys(a["title"]):  # "X: T" vs "T", never "X: T" vs "Y: T"
        return "same title behind an acronym prefix"
    if difflib.SequenceMatcher(None, norm_title(a["title"]), norm_title(b["title"])).ratio() >= 0.95:
        return "near-identical title"
    return None


def merge(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """Merge duplicates: the richest record is kept, missing fields and all categories are added."""
    groups: list[list[dict]] = []
    reasons: list[str] = []
    for r in records:
        for g, group in enumerate(groups):
            why = next((w for o in group if (w := _same(o, r))), None)
            if why:
                group.append(r)
                reasons[g] = reasons[g] or why
                break
        else:
            groups.append([r])
            reasons.append("")
    merged, log = [], []
    for group, why in zip(groups, reasons):
        keep = dict(max(group, key=_richness))
        keep["categories"] = list(keep["categories"])
        for other in group:
            for k, v in other.items():
                if k != "categories" and keep.get(k) is None and v is not None:
                    keep[k] = v
            keep["categories"] += [c for c in other["categories"] if c not in keep["categories"]]
        merged.append(keep)
        if len(group) > 1:
            log.append(
                {
                    "kept": keep["title"],
                    "merged": len(group),
                    "reason": why,
                    "titles": sorted({o["title"] for o in group} - {keep["title"]}) or [keep["title"]],
                }
            )
    return merged, log


def import_seed(seed_text: str, method_papers: dict[str, list[str]]) -> dict:
    """The whole catalog document. ``method_papers``: catalog id -> registered method names."""
    taxonomy, raw, fixes = parse(seed_text)
    for path, title in ADDED_TAXONOMY.items():  # after the parent's last descendant, else at the end
        parent = path.rpartition("/")[0]
        at = [
            i for i, t in enumerate(taxonomy) if parent and (t["path"] == parent or t["path"].startswith(parent + "/"))
        ]
        taxonomy.insert(at[-1] + 1 if at else len(taxonomy), {"path": path, "title": title})
    merged, log = merge([_record(r) for r in raw])
    taken: set[str] = {e["id"] for e in ADDED_ENTRIES}
    entries = []
    for r in merged:
        for cat, words in ADDED_CATEGORIES.items():
            if any(w in r["title"].lower() for w in words) and cat not in r["categories"]:
                r["categories"].append(cat)
        entries.append({"id": make_id(r["title"], r["arxiv"], taken), **r})
        known = KNOWN_ARXIV.get(norm_title(r["title"]))
        if known and not r["arxiv"]:
            entries[-1]["arxiv"] = known
            fixes.append({"title": r["title"], "fix": f"arXiv id {known} added (the list links only the venue's PDF)"})
    for e in ADDED_ENTRIES:
        entries.append({"venue": None, "year": None, "arxiv": None, "url": None, "code": None, **e, "source": "added"})
    for e in entries:
        e.setdefault("source", "seed")
        e["implemented_by"] = sorted(method_papers.get(e["id"], []))
        data = DATASETS.get(e["id"])
        e["datasets"], e["benchmarks"] = (list(data[0]), list(data[1])) if data else ([], [])
    return {"taxonomy": taxonomy, "merged": log, "fixes": fixes, "entries": entries}


def import_file(path: str | Path, method_papers: dict[str, list[str]]) -> dict:
    return import_seed(Path(path).read_text(encoding="utf-8"), method_papers)
