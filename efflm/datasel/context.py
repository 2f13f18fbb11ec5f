"""What a data method may read besides the rows' texts: a scoring model (any efflm model,
compressed ones included) and its tokenizer, and a target sample of texts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class DataContext:
    model: Any = None
    tokenizer: Any = None
    target: list[str] = field(default_factory=list)
