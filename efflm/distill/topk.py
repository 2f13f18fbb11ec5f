"""Cached top-k teacher log-probabilities (as DistillKit does): one teacher pass over the run's
batches stores, per token, the k most likely next tokens and their log-probabilities, so the
teacher need not be in memory while the student trains.

The missing mass is kept explicitly: teacher and student are compared as distributions over
k + 1 outcomes — the k cached tokens and "any other token" — whose last bucket holds
1 − Σ top-k probabilities (the teacher's from the cache, the student's computed from its full
softmax). Any divergence of ``efflm.distill.divergence`` applies to these bucketed distributions
unchanged; with k = vocab it is the exact divergence.

File: one safetensors file — ``ids [S, B, T]`` (the batches' tokens, padded with −1 to the
run's sequence length; a micro-batch's rows are found by them, so alignment is checked),
``index [S, B, T-1, k]`` (uint16 when the vocabulary fits, else int32) and ``logp [S, B, T-1, k]``
(float16) — with a JSON header naming the teacher, tokenizer, data and training shape. Bytes per
token: k·(2 + 2) with a uint16 index.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

FORMAT = "efflm-topk-1"


def tokenizer_hash(tok: Any) -> str:
    vocab = sorted(tok.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def top_k(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most likely tokens of each row and their log-probabilities (temperature 1)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    values, index = logp.topk(k, dim=-1)
    return index, values


def tail(logp_k: torch.Tensor) -> torch.Tensor:
    """log(1 − Σ exp(logp_k)): the log-probability of every other token, kept finite."""
    mass = logp_k.float().exp().sum(-1).clamp(max=1 - 1e-6)
    return torch.log1p(-mass)


def bucketed(student_logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The student's log-probabilities over the k cached tokens and the tail bucket: [N, k + 1]."""
    logq = F.log_softmax(student_logits.float(), dim=-1)
    logq_k = logq.gather(-1, index.long())
    return torch.cat([logq_k, tail(logq_k)[:, None]], dim=-1)


def teacher_bucketed(logp_k: torch.Tensor) -> torch.Tensor:
    return torch.cat([logp_k.float(), tail(logp_k)[:, None]], dim=-1)


def packed(index: torch.Tensor, logp_k: torch.Tensor) -> torch.Tensor:
    """One float tensor [N, 2k] carrying a chunk's cache rows (token ids are exact in float32)."""
    return torch.cat([index.float(), logp_k.float()], dim=-1)


def cached_divergence(divergence: Callable) -> Callable:
    """``divergence`` between the student's logits and a ``packed`` cache row, on k + 1 buckets."""

    def run(student_logits: torch.Tensor, teacher_packed: torch.Tensor) -> torch.Tensor:
        k = teacher_packed.shape[-1] // 2
        index, logp_k = teacher_packed[:, :k].long(), teacher_packed[:, k:]
        return divergence(bucketed(student_logits, index), teacher_bucketed(logp_k))

    return run


def write(path: Path, ids: torch.Tensor, index: torch.Tensor, logp: torch.Tensor, header: dict) -> None:
    from safetensors.torch import save_file

    from efflm.core.atomic import atomic_write_bytes_from

    small = int(header["vocab"]) <= 65536
    tensors = {
        "ids": ids.to(torch.int32).contiguous(),
        "index": index.to(torch.uint16 if small else torch.int32).contiguous(),
        "logp": logp.to(torch.float16).contiguous(),
    }
    meta = {"efflm": json.dumps({"format": FORMAT, **header})}
    atomic_write_bytes_from(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def read_header(path: Path) -> dict | None:
    """The cache's header, or None when the file is not a top-k cache."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:
        return None
    try:
        header = json.loads(meta.get("efflm", ""))
    except ValueError:
        return None
    return header if header.get("format") == FORMAT else None


class TopKCache:
    """The cached rows of one run: ``lookup(step, input_ids)`` gives ``(index, logp)`` for the
    rows of a micro-batch, found among that step's cached rows by their tokens (a batch the
    cache does not hold is an error, never a silent mismatch)."""

    def __init__(self, path: Path):
        from safetensors.torch import load_file

        t = load_file(str(path))
        self.ids, self.index, self.logp = t["ids"], t["index"], t["logp"]
        self.header = read_header(path)

    def lookup(self, step: int, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from efflm.core.errors import EfflmError

        T, rows = input_ids.shape[1], []
        if step >= self.ids.shape[0]:
            raise EfflmError(f"top-k cache: holds {self.ids.shape[0]} steps, the run reached step {step + 1}")
        for row in input_ids.cpu().to(torch.int32):  # a row's first T tokens (its padding included)
            hit = (self.ids[step, :, :T] == row).all(-1).nonzero()
            if not hit.numel():
                raise EfflmError(f"top-k cache: step {step} holds no batch row with these tokens")
            rows.append(int(hit[0]))
        where = input_ids.device  # the cache is read on the CPU; its rows go where the batch is
        return self.index[step, rows, : T - 1].to(where, torch.int64), self.logp[step, rows, : T - 1].to(where).float()
