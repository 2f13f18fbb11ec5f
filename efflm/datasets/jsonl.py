"""JSONL rows for the data commands (``efflm data ...``): streamed in, streamed out atomically.

A row is a JSON object. Its text is ``row[field]`` when a field is named (default ``text``);
a row without that field but in one of fine-tuning's forms has its text made from it:
``prompt`` + ``completion``, or the ``content`` of every message in ``messages``. Every
other field passes through untouched, and rows keep their input order.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from efflm.core.atomic import atomic_write_bytes_from, check_target
from efflm.core.errors import EfflmError


def row_text(row: dict[str, Any], field: str = "text", where: str = "row") -> str:
    """The text a data method reads from one row (see the module docstring)."""
    if field in row:
        value = row[field]
        if not isinstance(value, str):
            raise EfflmError(f"{where}: field {field!r} is not a string")
        return value
    if field == "text" and isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
        return row["prompt"] + "\n" + row["completion"]
    if field == "text" and isinstance(row.get("messages"), list):
        parts = [m.get("content") for m in row["messages"] if isinstance(m, dict)]
        if parts and all(isinstance(p, str) for p in parts):
            return "\n".join(parts)
    raise EfflmError(f"{where}: missing text field {field!r} (or prompt/completion, messages)")


def row_pair(row: dict[str, Any], where: str = "row") -> tuple[str, str]:
    """(instruction, response) of an instruction row: prompt/completion, or messages ending with
    the assistant's (the earlier messages' contents joined as the instruction)."""
    if isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
        return row["prompt"], row["completion"]
    msgs = row.get("messages")
    if isinstance(msgs, list) and len(msgs) >= 2 and all(isinstance(m, dict) for m in msgs):
        parts = [m.get("content") for m in msgs]
        if all(isinstance(p, str) for p in parts) and msgs[-1].get("role") == "assistant":
            return "\n".join(parts[:-1]), parts[-1]
    raise EfflmError(
        f"{where}: an instruction row needs prompt and completion, or messages ending with the assistant's"
    )


def row_prompt(row: dict[str, Any], field: str = "text", where: str = "row") -> tuple[str, str, str]:
    """(instruction, context, question) of a prompt row: ``context`` (else the text field) is what
    a compressor may shorten; ``instruction`` and ``question`` are optional and kept whole."""
    parts = []
    for name in ("instruction", "question"):
        value = row.get(name, "")
        if not isinstance(value, str):
            raise EfflmError(f"{where}: field {name!r} is not a string")
        parts.append(value)
    context = row["context"] if "context" in row else row_text(row, field, where)
    if not isinstance(context, str):
        raise EfflmError(f"{where}: field 'context' is not a string")
    return parts[0], context, parts[1]


READERS = {
    "text": row_text,
    "pair": lambda row, field, where: row_pair(row, where),
    "prompt": row_prompt,
}


def iter_rows(path: str | Path, field: str = "text", reads: str = "text") -> Iterator[tuple[dict[str, Any], Any]]:
    """``(row, text)`` for every non-blank line of a JSONL file, streamed (one line in memory);
    ``reads`` "pair" gives ``(row, (instruction, response))``, "prompt" ``(row, (instruction,
    context, question))``. A line that is not a JSON object, or lacks its text, stops with its
    line number."""
    p = Path(path)
    if not p.is_file():
        raise EfflmError(f"input not found: {p}")
    with p.open(encoding="utf-8", errors="strict") as f:
        try:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{p}:{n}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise EfflmError(f"{where}: invalid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise EfflmError(f"{where}: expected a JSON object, got {type(row).__name__}")
                yield row, READERS[reads](row, field, where)
        except UnicodeDecodeError:
            raise EfflmError(f"{p}: not UTF-8 text") from None


def check_input(path: str | Path, field: str = "text", reads: str = "text") -> int:
    """Read the whole input once before any work: the first bad line is reported and nothing is
    written; an input with no rows is refused. Returns the number of rows."""
    n = sum(1 for _ in iter_rows(path, field, reads))
    if n == 0:
        raise EfflmError(f"{path}: no rows (empty input)")
    return n


def check_output(path: str | Path, inputs: Iterable[str | Path] = ()) -> Path:
    """An output path that may be written: a regular file or absent, never one of the inputs."""
    out = Path(path)
    check_target(out)
    for i in inputs:
        if Path(i).exists() and out.exists() and out.resolve() == Path(i).resolve():
            raise EfflmError(f"--out {out} is the input file; choose another path")
    return out


def write_rows(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as JSONL atomically (all or nothing); returns how many were written."""
    count = 0

    def write(tmp: Path) -> None:
        nonlocal count
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1

    atomic_write_bytes_from(Path(path), write)
    return count
