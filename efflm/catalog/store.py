"""The paper catalog: one YAML file (taxonomy, merge record, entries), loaded and saved atomically."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from efflm.core.atomic import atomic_write_text
from efflm.core.errors import EfflmError

DEFAULT_PATH = Path(__file__).with_name("papers.yaml")
TYPES = ("paper", "repository", "framework", "leaderboard", "resource", "baseline")
KNOWN_VENUES = (
    "arXiv",
    "NeurIPS",
    "ICML",
    "ICLR",
    "ACL",
    "EMNLP",
    "NAACL",
    "EACL",
    "AAAI",
    "IJCAI",
    "KDD",
    "CVPR",
    "MLSys",
    "JMLR",
    "TACL",
    "ICML Workshop",
    "ICLR Workshop",
    "KDD Workshop",
    "NeurIPS Workshop (ENLSP)",
    "ACL Demo",
    "ACL SRW",
    "ECML-PKDD",
    "RANLP",
    "IJCNN",
    "ITSC",
    "AutoML",
    "Nature Machine Intelligence",
    "ACM Computing Surveys",
    "GitHub",
    "Google Blog",
)
FIELDS = {
    "id": str,
    "type": str,
    "title": str,
    "venue": (str, type(None)),
    "year": (int, type(None)),
    "arxiv": (str, type(None)),
    "url": (str, type(None)),
    "code": (str, type(None)),
    "categories": list,
    "implemented_by": list,
    "datasets": list,
    "benchmarks": list,
    "source": str,
}


@dataclass
class Catalog:
    taxonomy: list[dict]
    entries: list[dict]
    merged: list[dict]
    fixes: list[dict]
    path: Path | None = None

    def by_id(self) -> dict[str, dict]:
        return {e["id"]: e for e in self.entries}

    def category_titles(self) -> dict[str, str]:
        return {t["path"]: t["title"] for t in self.taxonomy}

    def to_doc(self) -> dict[str, Any]:
        return {"taxonomy": self.taxonomy, "merged": self.merged, "fixes": self.fixes, "entries": self.entries}


def schema_problems(doc: Any) -> list[str]:
    """Structural problems only (types and required keys); ``lint`` checks the content."""
    if not isinstance(doc, dict):
        return ["top level must be a mapping with 'taxonomy' and 'entries'"]
    problems = [f"missing top-level key {k!r}" for k in ("taxonomy", "entries") if not isinstance(doc.get(k), list)]
    if problems:
        return problems
    for i, t in enumerate(doc["taxonomy"]):
        if not (isinstance(t, dict) and isinstance(t.get("path"), str) and isinstance(t.get("title"), str)):
            problems.append(f"taxonomy[{i}]: needs string 'path' and 'title'")
    for i, e in enumerate(doc["entries"]):
        if not isinstance(e, dict):
            problems.append(f"entries[{i}]: not a mapping")
            continue
        name = e.get("id", f"entries[{i}]")
        for key, typ in FIELDS.items():
            if key not in e:
                problems.append(f"{name}: missing field {key!r}")
            elif not isinstance(e[key], typ) or isinstance(e[key], bool):
                problems.append(f"{name}: field {key!r} has type {type(e[key]).__name__}")
        problems += [f"{name}: unknown field {k!r}" for k in e if k not in FIELDS]
    return problems


def from_doc(doc: dict, path: Path | None = None) -> Catalog:
    return Catalog(doc["taxonomy"], doc["entries"], doc.get("merged") or [], doc.get("fixes") or [], path)


def load(path: str | Path = DEFAULT_PATH, check_schema: bool = True) -> Catalog:
    path = Path(path)
    if not path.is_file():
        raise EfflmError(f"catalog not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise EfflmError(f"{path}: malformed YAML{f' at line {mark.line + 1}' if mark else ''}") from None
    problems = schema_problems(doc)
    if check_schema and problems:
        raise EfflmError(
            f"{path}: malformed catalog: {problems[0]}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")
        )
    return from_doc(doc, path)


def dump(catalog: Catalog) -> str:
    return yaml.safe_dump(catalog.to_doc(), sort_keys=False, allow_unicode=True, width=120)


def save(catalog: Catalog, path: str | Path | None = None) -> Path:
    target = Path(path or catalog.path or DEFAULT_PATH)
    return atomic_write_text(target, dump(catalog))
