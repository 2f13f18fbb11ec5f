"""Checks that a file really is a model before anything heavy touches it."""

from __future__ import annotations

import hashlib
import json
import struct
from functools import lru_cache
from pathlib import Path

from efflm.core.errors import EfflmError


def sha256_file(path: Path) -> str:
    st = Path(path).stat()
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int, chunk: int = 1 << 22) -> str:
    """Hash once per process for a given (path, size, mtime)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_safetensors(path: Path) -> None:
    """Header parses and the file holds every byte the header promises (catches truncation)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n <= 0 or 8 + n > size:
                raise ValueError
            header = json.loads(f.read(n))
    except (struct.error, ValueError, UnicodeDecodeError):
        raise EfflmError(f"{path}: not a valid safetensors file (bad or truncated header)") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise EfflmError(f"{path}: truncated safetensors file ({size} bytes, header needs {8 + n + end})")


def gguf_architecture(path: Path) -> str:
    """Validate a GGUF file (magic, header, every tensor's bytes present); return its architecture."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise EfflmError(f"{path}: not a GGUF file (bad magic bytes)")
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode()
        size = path.stat().st_size
        for t in reader.tensors:
            if t.data_offset + t.n_bytes > size:
                raise ValueError("tensor data past end of file")
    except EfflmError:
        raise
    except Exception as e:  # gguf raises assorted errors on damaged files
        raise EfflmError(f"{path}: not a valid GGUF file (truncated or damaged: {type(e).__name__})") from None
    return arch
