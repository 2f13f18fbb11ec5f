"""Exact-match accuracy on efflm's built-in instruction tasks (``efflm.datasets.finetune.tasks``).

Greedy decoding of at most ``max_new_tokens`` tokens through transformers' ``generate`` (so
every adapter type — prompt and prefix tuning included — decodes the same way); the answer is
the completion up to the end of turn, stripped, compared with the reference exactly.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from efflm.core.progress import progress
from efflm.datasets.finetune import Task, prompt_ids


@torch.inference_mode()
def answer(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int = 16) -> str:
    from efflm.core.device import of as device_of

    ids = torch.tensor([prompt_ids(tokenizer, prompt)], device=device_of(model))
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
    )
    text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    return text.split("\n")[0].strip()


def task_accuracy(model: Any, tokenizer: Any, tasks: list[Task], max_new_tokens: int = 16) -> dict:
    """``{"task_acc": fraction correct, "task_acc_<kind>": ...}`` over ``tasks``."""
    right, seen = defaultdict(int), defaultdict(int)
    for t in progress(tasks, desc="tasks"):
        ok = answer(model, tokenizer, t.prompt, max_new_tokens) == t.answer
        right[t.kind] += ok
        seen[t.kind] += 1
    out = {"task_acc": sum(right.values()) / max(1, len(tasks))}
    out.update({f"task_acc_{k}": right[k] / seen[k] for k in sorted(seen)})
    return out
