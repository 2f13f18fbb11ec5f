"""Atomic outputs: a directory or file appears complete or not at all."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_dir(out: Path, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``out`` to fill; rename it to ``out`` on success.

    If ``out`` appeared meanwhile it is replaced (``replace``) or kept, and the new copy dropped.
    On any error the temporary directory is removed and nothing is left behind.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists() and not replace:
            shutil.rmtree(tmp)
            return
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def publish(path: Path, text: str) -> int:
    """End of a benchmark script: print its table, write it atomically, say where; exit code 0."""
    print(text)
    atomic_write_text(Path(path), text + "\n")
    print(f"wrote {path}")
    return 0


def atomic_write_bytes_from(path: Path, write) -> Path:
    """Call ``write(tmp_path)`` on a temporary sibling, then rename it to ``path``; on error remove it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
