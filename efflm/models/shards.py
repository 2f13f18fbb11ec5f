"""Read single tensors from a Hugging Face checkpoint's safetensors files, one at a time.

A checkpoint is one ``model.safetensors`` or shards named by ``model.safetensors.index.json``.
``Shards`` maps every tensor name to its file and byte range from the headers (checking up
front that every shard the index names is there and whole), and ``get`` reads one tensor with
plain file reads into memory of its own, cast to the dtype asked for. Not memory-mapped on
purpose: a mapped file's pages, once read, stay resident for as long as the mapping lives, so
streaming a whole checkpoint through one mapping would grow to the checkpoint's size.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import torch

from efflm.core.errors import EfflmError
from efflm.models.file_checks import check_safetensors

INDEX = "model.safetensors.index.json"


DTYPES = {
    "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip


def _header(path: Path) -> tuple[int, dict]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return 8 + n, json.loads(f.read(n))


class Shards:
    """The tensors of a safetensors checkpoint, each read from its file when asked for. ``splits``
    (``efflm.models.fused.split_names``) adds row ranges of stored tensors under names of their own
    (Phi-3's q/k/v rows of ``qkv_proj``), read without the rest of the fused tensor; ``renames``
    maps a name the checkpoint does not hold to the one it stores the tensor under."""

    def __init__(
        self,
        path: Path,
        splits: dict[str, tuple[str, int, int]] | None = None,
        renames: Callable[[str], str] | None = None,
    ):
        self.path = Path(path)
        self.splits = splits or {}
        self.renames = renames or (lambda name: name)  # a model's name -> the checkpoint's (Mixtral's experts)
        index = self.path / INDEX
        if index.is_file():
            try:
                names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
                raise EfflmError(f"{index}: not a valid safetensors index (no weight_map)") from None
        else:
            names = sorted(p.name for p in self.path.glob("*.safetensors"))
        if not names:
            raise EfflmError(f"{self.path}: no *.safetensors weights found")
        self.entries: dict[str, tuple[str, int, dict]] = {}  # tensor -> (file, data start, header entry)
        for name in names:
            f = self.path / name
            if not f.is_file():
                raise EfflmError(f"{self.path}: shard {name} named by {INDEX} is missing")
            check_safetensors(f)
            start, header = _header(f)
            for tensor, entry in header.items():
                if tensor != "__metadata__":
                    self.entries[tensor] = (name, start, entry)
        self.weight_map = {t: e[0] for t, e in self.entries.items()}

    def __contains__(self, name: str) -> bool:
        name = name if name in self.entries else self.renames(name)
        return name in self.entries or (name in self.splits and self.splits[name][0] in self.entries)

    def names(self, prefix: str = "") -> list[str]:
        return [n for n in self.entries if n.startswith(prefix)]

    def shape(self, name: str) -> list[int]:
        return list(self.entries[name][2]["shape"])

    def dtype(self) -> torch.dtype:
        """The dtype of the checkpoint's floating-point tensors (its first one's)."""
        for _, _, entry in self.entries.values():
            dt = DTYPES.get(entry["dtype"])
            if dt is not None and dt.is_floating_point:
                return dt
        return torch.float32

    def get(self, name: str, dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        name = name if name in self.entries else self.renames(name)
        stored, rows = name, None
        if name not in self.entries and name in self.splits:
            stored, r0, r1 = self.splits[name]
            rows = (r0, r1)
        if stored not in self.entries:
            raise EfflmError(f"{self.path}: tensor {stored!r} is missing from the checkpoint")
        file, start, entry = self.entries[stored]
        if entry["dtype"] not in DTYPES:
            raise EfflmError(f"{self.path / file}: tensor {stored!r} has unsupported dtype {entry['dtype']}")
        a, b = entry["data_offsets"]
        shape = list(entry["shape"])
        if rows is not None:  # only these rows' bytes are read
            row = (b - a) // max(shape[0], 1)
            a, b, shape[0] = a + rows[0] * row, a + rows[1] * row, rows[1] - rows[0]
        raw = torch.empty(b - a, dtype=torch.uint8)
        with open(self.path / file, "rb") as f:
            f.seek(start + a)
            if f.readinto(memoryview(raw.numpy())) != b - a:
                raise EfflmError(f"{self.path / file}: truncated while reading {name!r}")
        t = raw.view(DTYPES[entry["dtype"]]).reshape(shape)
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        return t.to(device)


def parameter_count(path: Path) -> int:
    """Elements in every tensor of the checkpoint at ``path``, from the headers alone."""
    import math

    shards = Shards(path)
    return sum(math.prod(shards.shape(name)) for name in shards.entries)
