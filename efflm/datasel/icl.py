"""In-context classification, shared by the demonstration methods: a k-shot prompt from chosen
demonstrations, the label distribution after it (optionally contextually calibrated), and the
prediction. ``efflm data icl`` and ``benchmarks/icl_demos.py`` run through here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from efflm.core.progress import progress
from efflm.datasel.calibrate_before_use import ContextualCalibrationConfig, ICLItem, calibrate, label_probs


@dataclass(frozen=True)
class Template:
    input_prefix: str = "Input: "
    label_prefix: str = "Label:"

    def demo(self, text: str, label: str) -> str:
        return f"{self.input_prefix}{text}\n{self.label_prefix} {label}\n\n"

    def query(self, demos: Sequence[tuple[str, str]], text: str) -> str:
        return "".join(self.demo(t, lab) for t, lab in demos) + f"{self.input_prefix}{text}\n{self.label_prefix}"


def predict(model: Any, tok: Any, queries: Sequence[str], demos: Sequence[Sequence[int]],
            pool: Sequence[tuple[str, str]], labels: Sequence[str], template: Template = Template(),
            calibration: ContextualCalibrationConfig | None = None) -> list[list[float]]:  # fmt: skip
    """Each query's label distribution after its k-shot prompt (labels scored with a leading
    space); with ``calibration``, divided by the same prompt's content-free distribution."""
    words = [" " + lab for lab in labels]
    out = []
    for q, d in progress(list(zip(queries, demos)), "ICL", total=len(queries)):
        shots = [pool[i] for i in d]
        p = label_probs(model, tok, template.query(shots, q), words)
        if calibration is not None:
            item = ICLItem(template.query(shots, q), tuple(template.query(shots, c) for c in calibration.content_free))
            p_cf = np.mean([label_probs(model, tok, c, words) for c in item.content_free], axis=0)
            p = calibrate(p, p_cf)
        out.append(p.tolist())
    return out
