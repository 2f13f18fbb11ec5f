"""What a data method may read besides the rows' texts: a scoring model (any efflm model,
compressed ones included) and its tokenizer, a target sample of texts (DSIR), a pool of
demonstrations (KATE) and the label words of a classification task (contextual calibration)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class DataContext:
    model: Any = None
    tokenizer: Any = None
    target: list[str] = field(default_factory=list)
    pool: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
