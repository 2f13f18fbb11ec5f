"""Training data of a fine-tuning run (``--data domain|tasks|FILE.jsonl``): deterministic
batches by step, sharded across processes, and the held-out evaluation that goes with it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch

from efflm.core.defaults import EVAL_SEQ_LEN, EVAL_WINDOWS
from efflm.core.errors import EfflmError
from efflm.datasets import finetune as ftdata
from efflm.finetune.train import TrainConfig

N_TRAIN_TASKS, N_TEST_TASKS, N_EVAL_TASKS_PERIODIC = 2000, 100, 32


@dataclass
class Data:
    """A training set: ``batch_at(step, micro, n_micro)`` and how to evaluate on its held-out side."""

    spec: str
    tokenizer: Any
    cfg: TrainConfig
    examples: list | None = None  # (ids, n_prompt) rows, or None for domain windows
    tokens: torch.Tensor | None = None
    rank: int = 0
    world: int = 1
    truncated: int = 0  # rows cut to train.seq_len (JSONL data)

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256(self.spec.encode())
        if self.examples is not None:
            h.update(json.dumps(self.examples).encode())
        else:
            h.update(str(self.tokens.numel()).encode() + self.tokens[:4096].numpy().tobytes())
        return h.hexdigest()[:16]

    def _slice(self, micro: int, n_micro: int) -> range:
        per = self.cfg.batch // (n_micro * self.world)
        start = (micro * self.world + self.rank) * per
        return range(start, start + per)

    def batch_at(self, step: int, micro: int, n_micro: int) -> dict[str, torch.Tensor]:
        cfg, rows = self.cfg, self._slice(micro, n_micro)
        if self.examples is None:
            g = torch.Generator().manual_seed(cfg.seed * 1_000_033 + step)
            starts = torch.randint(0, self.tokens.numel() - cfg.seq_len, (cfg.batch,), generator=g)
            ids = torch.stack([self.tokens[s : s + cfg.seq_len] for s in starts[rows.start : rows.stop].tolist()])
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
        n, out = len(self.examples), []
        for j in rows:
            i = step * cfg.batch + j
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_019 + i // n))
            out.append(self.examples[int(perm[i % n])])
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        return ftdata.collate(out, pad, cfg.seq_len)


def load_data(spec: str, tokenizer: Any, cfg: TrainConfig) -> Data:
    """Read and check the training data before any weights load."""
    if spec == "domain":
        from efflm.datasets.text import DEV_TOKENS, _split_tokens

        tokens = _split_tokens(tokenizer, "calib")[:-DEV_TOKENS]
        if tokens.numel() <= cfg.seq_len:
            raise EfflmError(f"calibration split too short for seq_len {cfg.seq_len}")
        return Data(spec, tokenizer, cfg, tokens=tokens)
    if spec == "tasks":
        rows = [ftdata.encode_chat(tokenizer, t.prompt, t.answer) for t in ftdata.tasks("train", N_TRAIN_TASKS)]
        longest = max(len(ids) for ids, _ in rows)
        if longest > cfg.seq_len:
            raise EfflmError(f"tasks: examples reach {longest} tokens, more than train.seq_len {cfg.seq_len}")
        return Data(spec, tokenizer, cfg, examples=rows)
    if not spec.endswith(".jsonl"):
        raise EfflmError(f"--data must be 'domain', 'tasks' or a .jsonl file, got {spec!r}")
    examples, truncated = ftdata.read_jsonl(spec, tokenizer, max_tokens=cfg.seq_len)
    if truncated:
        import sys

        print(
            f"efflm: {truncated} of {len(examples)} rows of {spec} truncated to train.seq_len {cfg.seq_len} tokens",
            file=sys.stderr,
        )
    return Data(spec, tokenizer, cfg, examples=examples, truncated=truncated)


def evaluator(data_spec: str, tokenizer: Any, final: bool):
    """The held-out metrics of a data set: perplexity on the evaluation split; task accuracy."""
    from efflm.datasets.text import eval_tokens
    from efflm.eval.metrics import perplexity
    from efflm.eval.tasks import task_accuracy

    ids = eval_tokens(tokenizer, EVAL_SEQ_LEN * EVAL_WINDOWS)

    def run(model) -> dict:
        out = {"ppl": perplexity(model, ids, EVAL_SEQ_LEN, EVAL_WINDOWS)["ppl"]}
        if data_spec == "tasks":
            n = N_TEST_TASKS if final else N_EVAL_TASKS_PERIODIC
            out.update(task_accuracy(model, tokenizer, ftdata.tasks("test", n)))
        return out

    return run
