"""Your own calibration data (``--calib FILE``), in place of the built-in calibration split.

* ``.txt``: the whole file is the calibration text.
* ``.jsonl``: one JSON object a line (blank lines skipped). A row's text is its ``text`` string,
  or its chat ``messages`` (a list of ``{"role": ..., "content": ...}``) rendered through the
  tokenizer's chat template (``apply_chat_template(messages, tokenize=False)``). Every row
  must have one of the two.

Rows are joined with ``SEPARATOR`` (a blank line) and tokenized once (no special tokens
added); calibration windows are drawn from those tokens exactly as from the built-in split
(``efflm.datasets.text.draw_windows``: seeded random starts). Every bad input is one
``EfflmError`` line, raised by ``check_calib`` before any weights are loaded.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from efflm.core.errors import EfflmError
from efflm.datasets import text as _text

SEPARATOR = "\n\n"
SUFFIXES = (".txt", ".jsonl")
_ROW_HELP = "a 'text' string or a 'messages' list of {role, content} strings"


def _read(path: str | Path) -> tuple[Path, str]:
    p = Path(path)
    if not p.is_file():
        raise EfflmError(f"calibration file not found: {p}")
    if p.suffix.lower() not in SUFFIXES:
        raise EfflmError(f"{p}: unknown calibration file type {p.suffix or '(none)'!r} (expected .txt or .jsonl)")
    try:
        data = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise EfflmError(f"{p}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise EfflmError(f"{p}: cannot read: {e.strerror or e}") from None
    if not data.strip():
        raise EfflmError(f"{p}: calibration file is empty")
    return p, data


def _messages(value: Any) -> list[dict[str, str]] | None:
    """The row's messages if they are a non-empty list of {role: str, content: str}, else None."""
    if not isinstance(value, list) or not value:
        return None
    for m in value:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            return None
    return value


def _render(tokenizer, messages: list[dict[str, str]], where: str) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise EfflmError(f"{where}: chat 'messages' need a chat template, and the model's tokenizer has none")
    try:
        out = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception as e:  # a template is user code (jinja): any failure is this row's bad input
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EfflmError(f"{where}: the chat template rejected these messages: {first}") from None
    if not isinstance(out, str):
        raise EfflmError(f"{where}: the chat template did not render to text")
    return out


def _jsonl_rows(p: Path, data: str, tokenizer) -> list[str]:
    rows = []
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{p}:{n}"
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            raise EfflmError(f"{where}: not JSON") from None
        if not isinstance(row, dict):
            raise EfflmError(f"{where}: not a JSON object (a row needs {_ROW_HELP})")
        if isinstance(row.get("text"), str):
            text = row["text"]
        else:
            messages = _messages(row.get("messages"))
            if messages is None:
                raise EfflmError(f"{where}: a calibration row needs {_ROW_HELP}")
            text = _render(tokenizer, messages, where)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # JSON may escape a lone surrogate ("\ud800"): no tokenizer takes it
            raise EfflmError(f"{where}: text is not valid Unicode (a lone surrogate escape)") from None
        rows.append(text)
    return rows


def read_calib_text(path: str | Path, tokenizer: Any) -> str:
    """The calibration text of a ``.txt`` or ``.jsonl`` file (see the module docstring); the
    tokenizer renders chat ``messages`` rows."""
    p, data = _read(path)
    if p.suffix.lower() == ".txt":
        return data
    text = SEPARATOR.join(_jsonl_rows(p, data, tokenizer))
    if not text.strip():
        raise EfflmError(f"{p}: no calibration text (every row's text is empty)")
    return text


def _tokenizer_key(tokenizer: Any) -> str | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    template = getattr(tokenizer, "chat_template", None) or ""
    return hashlib.sha256(backend.to_str().encode() + b"\0" + str(template).encode()).hexdigest()


_CACHE: OrderedDict[tuple, torch.Tensor] = OrderedDict()  # validate, then load_and_apply: tokenized once


def calib_file_tokens(path: str | Path, tokenizer: Any) -> torch.Tensor:
    """The file's calibration text as a 1-D LongTensor of token ids (kept for the next call
    while the file and the tokenizer are unchanged)."""
    p = Path(path)
    key = None
    if p.is_file():
        st = p.stat()
        tok_key = _tokenizer_key(tokenizer)
        key = (str(p.resolve()), st.st_mtime_ns, st.st_size, tok_key) if tok_key else None
    if key is not None and key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    ids = _text.tokenize(tokenizer, read_calib_text(p, tokenizer))
    if key is not None:
        _CACHE[key] = ids
        while len(_CACHE) > 2:
            _CACHE.popitem(last=False)
    return ids


def check_calib(tokenizer: Any, n_samples: int, seq_len: int, path: str | Path | None = None) -> None:
    """Raise unless ``n_samples`` windows of ``seq_len`` tokens can be drawn from ``path``
    (the built-in calibration split when ``None``)."""
    if path is None:
        _text.check_calibration(tokenizer, n_samples, seq_len)
        return
    _text.check_sizes(n_samples, seq_len)  # before reading the file
    _text.check_windows(calib_file_tokens(path, tokenizer).numel(), n_samples, seq_len, str(path))


def calib_windows(
    tokenizer: Any, n_samples: int, seq_len: int, path: str | Path | None = None, seed: int = 0
) -> torch.Tensor:
    """``(n_samples, seq_len)`` calibration windows, seeded: from ``path`` when given, else from
    the built-in calibration split (``efflm.datasets.text.calibration_windows``)."""
    if path is None:
        return _text.calibration_windows(tokenizer, n_samples, seq_len, seed)
    check_calib(tokenizer, n_samples, seq_len, path)
    return _text.draw_windows(calib_file_tokens(path, tokenizer), n_samples, seq_len, seed)


def file_digest(path: str | Path) -> str:
    """sha256 (16 hex) of a calibration file's bytes: which file a result was calibrated on."""
    p = Path(path)
    if not p.is_file():
        raise EfflmError(f"calibration file not found: {p}")
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
