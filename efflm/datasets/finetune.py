"""Fine-tuning data, offline: domain text, built-in instruction tasks, or a JSONL file.

* ``domain``: windows of the calibration split (continued pre-training); held-out perplexity
  on the evaluation split.
* ``tasks``: instruction tasks generated from a seed — arithmetic in words, list reversal,
  number sorting, unit conversion, weekday arithmetic — answered by exact match. A problem
  lands in train or test by a hash of its text, so the two are disjoint by construction.
* ``FILE.jsonl``: rows ``{"prompt", "completion"}`` or ``{"messages": [...]}`` (the last
  message is the assistant's answer), each through the model's chat template.

An example is ``(ids, n_prompt)``: the loss covers the tokens after the prompt only.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from efflm.core.errors import EfflmError

BUILTIN = ("domain", "tasks")
MAX_ROW_TOKENS = 4096
_WORDS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen".split()
_ITEMS = "apple river stone cloud tiger lamp paper music garden window silver horse candle bridge".split()
_DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_UNITS = (
    ("kilometers", "meters", 1000),
    ("meters", "centimeters", 100),
    ("hours", "minutes", 60),
    ("kilograms", "grams", 1000),
    ("minutes", "seconds", 60),
)


@dataclass(frozen=True)
class Task:
    prompt: str
    answer: str
    kind: str


def _problem(rng: random.Random) -> Task:
    kind = rng.choice(("arithmetic", "reverse", "sort", "convert", "weekday"))
    if kind == "arithmetic":
        a, b, c = (rng.randrange(0, 16) for _ in range(3))
        op1, op2 = rng.choice("+-"), rng.choice("+-")
        words = {"+": "plus", "-": "minus"}
        value = eval(f"{a}{op1}{b}{op2}{c}")  # noqa: S307 (digits and +/- only)
        return Task(
            f"What is {_WORDS[a]} {words[op1]} {_WORDS[b]} {words[op2]} {_WORDS[c]}? Answer with digits.",
            str(value),
            kind,
        )
    if kind == "reverse":
        items = rng.sample(_ITEMS, rng.randrange(3, 6))
        return Task(f"Reverse this list: {', '.join(items)}", ", ".join(reversed(items)), kind)
    if kind == "sort":
        nums = [rng.randrange(1, 100) for _ in range(rng.randrange(3, 6))]
        return Task(
            f"Sort these numbers from smallest to largest: {', '.join(map(str, nums))}",
            ", ".join(map(str, sorted(nums))),
            kind,
        )
    if kind == "convert":
        big, small, factor = rng.choice(_UNITS)
        n = rng.randrange(2, 20)
        return Task(f"How many {small} are in {n} {big}? Answer with digits.", str(n * factor), kind)
    d, k = rng.randrange(7), rng.randrange(1, 12)
    return Task(f"Today is {_DAYS[d]}. What day of the week is it {k} days from today?", _DAYS[(d + k) % 7], kind)


def _split_of(task: Task) -> str:
    return "test" if int(hashlib.sha256(task.prompt.encode()).hexdigest(), 16) % 5 == 0 else "train"


def tasks(split: str, n: int, seed: int = 0) -> list[Task]:
    """``n`` distinct problems of one split (``train``/``test``), reproducible from the seed."""
    rng, out, seen = random.Random(f"efflm-tasks-{seed}"), [], set()
    for _ in range(200 * n + 1000):
        t = _problem(rng)
        if _split_of(t) == split and t.prompt not in seen:
            seen.add(t.prompt)
            out.append(t)
            if len(out) == n:
                return out
    raise EfflmError(f"could not draw {n} distinct {split} tasks")


def encode_chat(tokenizer: Any, prompt: str | list[dict], completion: str) -> tuple[list[int], int]:
    """Token ids of prompt (through the chat template, if the tokenizer has one) + completion +
    end of turn, and the number of prompt tokens."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if getattr(tokenizer, "chat_template", None):
        p = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        p = "\n".join(m["content"] for m in messages) + "\n"
    p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return list(p_ids) + list(c_ids), len(p_ids)


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    ids, n_prompt = encode_chat(tokenizer, prompt, "")
    return ids[:n_prompt]


def read_jsonl(
    path: str | Path, tokenizer: Any, max_tokens: int = MAX_ROW_TOKENS
) -> tuple[list[tuple[list[int], int]], int]:
    """Examples of a JSONL file and how many were truncated; any bad row fails naming the file
    and line. A row longer than ``max_tokens`` (``train.seq_len``) keeps its first ``max_tokens``
    tokens, as trl's SFT truncates; a row whose prompt alone fills them has nothing left to learn
    from and fails, naming ``train.seq_len``."""
    p = Path(path)
    if not p.is_file():
        raise EfflmError(f"data file not found: {p}")
    out, truncated = [], 0
    with p.open(encoding="utf-8", errors="strict") as f:
        try:
            lines = list(f)
        except UnicodeDecodeError:
            raise EfflmError(f"{p}: not UTF-8 text") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{p}:{i}"
        try:
            row = json.loads(line)
        except ValueError:
            raise EfflmError(f"{where}: not valid JSON") from None
        if not isinstance(row, dict):
            raise EfflmError(f"{where}: expected an object with prompt/completion, messages or text")
        if "text" in row and "prompt" not in row and "messages" not in row:  # plain text: every token counts
            if not isinstance(row["text"], str) or not row["text"].strip():
                raise EfflmError(f"{where}: text must be a non-empty string")
            ids = list(tokenizer(row["text"], add_special_tokens=False)["input_ids"])
            truncated += len(ids) > max_tokens
            out.append((ids[:max_tokens], 0))
            continue
        if "messages" in row:
            msgs = row["messages"]
            ok = (
                isinstance(msgs, list)
                and len(msgs) >= 2
                and all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in msgs
                )
            )
            if not ok or msgs[-1]["role"] != "assistant":
                raise EfflmError(f"{where}: messages must be a list of {{role, content}} ending with the assistant's")
            prompt, completion = msgs[:-1], msgs[-1]["content"]
        elif "prompt" in row and "completion" in row:
            prompt, completion = row["prompt"], row["completion"]
            if not isinstance(prompt, str) or not isinstance(completion, str):
                raise EfflmError(f"{where}: prompt and completion must be strings")
        else:
            raise EfflmError(f"{where}: missing fields: need prompt and completion, messages, or text")
        if not completion.strip() or (isinstance(prompt, str) and not prompt.strip()):
            raise EfflmError(f"{where}: empty prompt or completion")
        ids, n_prompt = encode_chat(tokenizer, prompt, completion)
        if n_prompt >= max_tokens:
            raise EfflmError(
                f"{where}: the prompt is {n_prompt} tokens, leaving no completion token within "
                f"train.seq_len {max_tokens} (raise train.seq_len in the method recipe)"
            )
        truncated += len(ids) > max_tokens
        out.append((ids[:max_tokens], n_prompt))
    if not out:
        raise EfflmError(f"{p}: no rows")
    return out, truncated


def collate(examples: list[tuple[list[int], int]], pad_id: int, seq_len: int) -> dict[str, torch.Tensor]:
    """Right-padded batch, truncated to ``seq_len``; labels −100 on prompt and padding."""
    T = min(seq_len, max(len(ids) for ids, _ in examples))
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), T), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), T), dtype=torch.long)
    for b, (x, n_prompt) in enumerate(examples):
        x = x[:T]
        ids[b, : len(x)] = torch.tensor(x)
        mask[b, : len(x)] = 1
        labels[b, n_prompt : len(x)] = torch.tensor(x[n_prompt:])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
