"""Atomic outputs: a directory or file appears complete or not at all.

Temporaries are unique siblings of the target (``tempfile``), removed on any failure; a
target that exists and is not a regular file (a directory, a device such as /dev/null, a
FIFO) is refused rather than replaced; and nothing that efflm did not create is deleted.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from efflm.core.errors import EfflmError


def check_target(path: Path) -> None:
    """Refuse an output path that exists and is not a regular file (never replace /dev/null)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise EfflmError(f"{path} exists and is not a regular file; refusing to replace it")


@contextmanager
def atomic_dir(out: Path, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``out`` to fill; rename it to ``out`` on success.

    If ``out`` appeared meanwhile (another process, another run) it is never deleted: with
    ``replace`` false the new copy is dropped and the other kept (a cache filled twice);
    with ``replace`` true the call fails and leaves both as they are.
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
            raise EfflmError(f"{out} appeared while efflm was writing it; left as it is (choose another --out)")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes_from(path: Path, write: Callable[[Path], None], replace: bool = True) -> Path:
    """Call ``write(tmp_path)`` on a unique temporary sibling, then rename it to ``path``;
    on error remove the temporary. ``path`` must be absent or a regular file; with
    ``replace`` false it must stay absent (a file that appeared meanwhile is left alone)."""
    path = Path(path)
    check_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        check_target(path)
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if path exists: no clobbering
            except FileExistsError:
                raise EfflmError(f"{path} appeared while efflm was writing it; left as it is") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes_from(Path(path), lambda tmp: tmp.write_text(text))


def publish(path: Path, text: str) -> int:
    """End of a benchmark script: print its table, write it atomically, say where; exit code 0."""
    print(text)
    atomic_write_text(Path(path), text + "\n")
    print(f"wrote {path}")
    return 0
