"""Benchmark suites: lists of recipes. ``default`` is what ``make bench`` runs (< 10 min on 2 cores).

The default model's weights are a dequantized Q4_1 file (asymmetric 4-bit, groups of 32),
so its suites avoid that exact grid: asymmetric g32 4-bit re-quantization is lossless on it.
"""
from __future__ import annotations

from efflm.core.recipe import Recipe
from efflm.core.registry import config_from_dict, methods


def _r(*steps: dict) -> Recipe:
    return [config_from_dict(s) for s in steps]


def default_suite() -> list[Recipe]:
    """Dense fp32/bf16; packed W8 and W4 through the CPU kernels; RTN vs GPTQ vs AWQ at 3 bits
    (int4 kernel); naive W8A8 vs SmoothQuant W8A8."""
    bf16 = {"method": "dense", "dtype": "bfloat16"}
    return [
        _r({"method": "dense", "dtype": "float32"}),
        _r(bf16),
        _r({"method": "rtn", "bits": 8, "group_size": -1}, bf16),   # int8 kernel
        _r({"method": "rtn", "bits": 4, "group_size": 64}, bf16),   # int4 kernel
        _r({"method": "rtn", "bits": 3, "group_size": 64}, bf16),
        _r({"method": "gptq", "bits": 3, "group_size": 64}, bf16),
        _r({"method": "awq", "bits": 3, "group_size": 64, "n_grid": 10}, bf16),  # coarser grid: < 10 min
        _r({"method": "w8a8"}),
        _r({"method": "smoothquant", "alpha": 0.6}),
    ]


def full_suite() -> list[Recipe]:
    """The default suite, the paper-shape rows, and every registered method at its default config."""
    suite = default_suite() + [_r({"method": "rtn", "bits": b, "group_size": 64}) for b in (8, 4, 3)] + [
        _r({"method": m, "bits": b, "group_size": 64}) for m in ("gptq", "awq") for b in (4, 3)]
    labels = {tuple(c.label() for c in r) for r in suite}
    for m in methods():
        r = [m.config_cls()]
        if (r[0].label(),) not in labels:
            suite.append(r)
    return suite


SUITES = {"default": default_suite, "full": full_suite}
