"""In-context classification, shared by the demonstration methods: a k-shot prompt from chosen
demonstrations, the label distribution after it (optionally contextually calibrated), and the
prediction. ``efflm data icl`` and ``benchmarks/icl_demos.py`` run through here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from efflm.core.progress import progress
from efflm.data_methods.calibrate_before_use import ContextualCalibrationConfig, ICLItem, calibrate, probs_and_bias


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
    cf = calibration.content_free if calibration is not None else ()
    for q, d in progress(list(zip(queries, demos)), "ICL", total=len(queries)):
        p, p_cf = probs_and_bias(model, tok, item(template, [pool[i] for i in d], q, cf), words)
        out.append((calibrate(p, p_cf) if p_cf is not None else p).tolist())
    return out


def item(template: Template, shots: Sequence[tuple[str, str]], query: str, content_free: Sequence[str] = ()) -> ICLItem:
    """The k-shot prompt for ``query`` and the same prompt around each content-free input."""
    return ICLItem(template.query(shots, query), tuple(template.query(shots, c) for c in content_free))
