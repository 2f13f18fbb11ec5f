"""The teacher of a distillation run: checking it against the student before any weights load,
and the top-k cache (``efflm distill-cache``) that stands in for it — written by one teacher pass
over exactly the batches the run will read, and refused when made for another teacher,
tokenizer, data or training shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from efflm.core import recipe as recipes
from efflm.core.errors import EfflmError
from efflm.finetune.train import TrainConfig
from efflm.methods import MethodConfig
from efflm.trainer.batches import Data


def check_teacher(teacher: str, teacher_recipe: recipes.Recipe, student_config: Any, student_tok: Any) -> Any:
    """Teacher and student must share a tokenizer: checked from configs and tokenizer files,
    before any weights load. Returns the teacher's config after its recipe."""
    from efflm import pipeline
    from efflm.models.sources import load_tokenizer

    t_config = pipeline.validate(teacher, teacher_recipe)
    tv, sv = getattr(t_config, "vocab_size", None), getattr(student_config, "vocab_size", None)
    if tv != sv:
        raise EfflmError(f"teacher {teacher} has a vocabulary of {tv} tokens, the student {sv}: they must match")
    if load_tokenizer(teacher).get_vocab() != student_tok.get_vocab():
        raise EfflmError(f"teacher {teacher} and the student have different tokenizers")
    return t_config


def _shape(cfg: TrainConfig) -> dict:
    return {"seq_len": cfg.seq_len, "batch": cfg.batch, "seed": cfg.seed, "steps": cfg.steps}


def open_cache(path: str | Path, tune: MethodConfig, cfg: TrainConfig, data: Data, hf_config: Any, tok: Any):
    """The cache for this run, after checking it was made for this tokenizer, data and shape."""
    from efflm.distill.topk import TopKCache, read_header, tokenizer_hash

    path = Path(path)
    if not path.is_file():
        raise EfflmError(f"--teacher-cache: {path} not found")
    header = read_header(path)
    if header is None:
        raise EfflmError(f"--teacher-cache: {path} is not a top-k cache made by efflm distill-cache")
    if getattr(tune, "lmbda", 0) > 0:
        raise EfflmError(f"{tune.method}: on-policy batches need a live teacher (--teacher), not a cache")
    if getattr(tune, "temperature", 1.0) != 1.0 or getattr(tune, "hidden_weight", 0) > 0:
        raise EfflmError("a top-k cache holds the teacher at temperature 1 without hidden states: "
                         "set temperature: 1.0 and hidden_weight: 0")  # fmt: skip
    if header["tokenizer"] != tokenizer_hash(tok) or header["vocab"] != getattr(hf_config, "vocab_size", None):
        raise EfflmError(f"--teacher-cache: {path} was made with another tokenizer than the student's")
    if header["data"] != data.fingerprint:
        raise EfflmError(f"--teacher-cache: {path} was made on other data than --data {data.spec}")
    want, have = _shape(cfg), header["train"]
    if any(have[k] != want[k] for k in ("seq_len", "batch", "seed")) or have["steps"] < want["steps"]:
        raise EfflmError(f"--teacher-cache: {path} was made for train {have}, this run is {want}")
    return TopKCache(path)


def build_cache(
    teacher: str, teacher_recipe: recipes.Recipe, student: str, cfg: TrainConfig, data_spec: str, out: str | Path,
    k: int,
) -> dict:  # fmt: skip
    """One teacher pass over the run's batches (``cfg``'s steps, batch, sequence length and seed
    on ``data_spec``), writing each position's top-k log-probabilities to ``out``."""
    from efflm import pipeline
    from efflm.core.progress import progress
    from efflm.distill.topk import tokenizer_hash, top_k, write
    from efflm.models.sources import load_tokenizer, model_config
    from efflm.trainer.batches import load_data
    from efflm.trainer.checkpoints import base_identity

    out = Path(out)
    if out.exists():
        raise EfflmError(f"output exists: {out} (choose another --out)")
    tok = load_tokenizer(student)
    t_config = check_teacher(teacher, teacher_recipe, model_config(student), tok)
    if not 0 < k <= t_config.vocab_size:
        raise EfflmError(f"--k must be in 1..{t_config.vocab_size}, got {k}")
    data = load_data(data_spec, tok, cfg)
    model, _ = pipeline.load_and_apply(teacher, teacher_recipe)
    ids, index, logp = [], [], []
    with torch.inference_mode():
        for step in progress(range(cfg.steps), desc="teacher top-k", total=cfg.steps, leave=True):
            b = data.batch_at(step, 0, 1)
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
            i, v = top_k(logits, k)
            pad = cfg.seq_len - b["input_ids"].shape[1]  # rows of example data vary in length
            ids.append(torch.nn.functional.pad(b["input_ids"], (0, pad), value=-1))
            index.append(torch.nn.functional.pad(i, (0, 0, 0, pad)))
            logp.append(torch.nn.functional.pad(v, (0, 0, 0, pad)))
    header = {
        "teacher": base_identity(teacher, teacher_recipe),
        "tokenizer": tokenizer_hash(tok),
        "vocab": t_config.vocab_size,
        "k": k,
        "data": data.fingerprint,
        "data_spec": data_spec,
        "train": _shape(cfg),
    }
    write(out, torch.stack(ids), torch.stack(index), torch.stack(logp), header)
    tokens = cfg.steps * cfg.batch * (cfg.seq_len - 1)
    return {"bytes": out.stat().st_size, "tokens": tokens, "bytes_per_token": out.stat().st_size / tokens, "k": k}


def generate_data(
    teacher: str, teacher_recipe: recipes.Recipe, out: str | Path, n: int, max_new_tokens: int,
    prompts: str | None = None, greedy_first: int = 3, temperature: float = 1.0, seed: int = 0, batch: int = 8,
) -> dict:  # fmt: skip
    """Training text written by the teacher, as JSONL for ``--data``. Without ``prompts``:
    LLM-QAT's data-free text — each row starts from a random vocabulary token, takes the next
    ``greedy_first`` tokens greedily and samples the rest (``{"text"}`` rows). With ``prompts`` (a
    JSONL of ``{"prompt"}`` rows): sequence-level KD — the teacher's completion of each prompt
    through the chat template (``{"prompt", "completion"}`` rows; greedy at temperature 0)."""
    import json

    from efflm import pipeline
    from efflm.core.atomic import atomic_write_text
    from efflm.core.progress import progress
    from efflm.inference.generate import SamplingConfig, encode, generate_ids
    from efflm.models.sources import load_tokenizer

    out = Path(out)
    if out.exists():
        raise EfflmError(f"output exists: {out} (choose another --out)")
    if not out.name.endswith(".jsonl"):
        raise EfflmError(f"--out must name a .jsonl file, got {out}")
    if temperature < 0 or greedy_first < 0:
        raise EfflmError("--temperature and --greedy-first must be >= 0")
    pipeline.validate(teacher, teacher_recipe)
    tok = load_tokenizer(teacher)
    texts = _read_prompts(prompts) if prompts is not None else None
    if texts is not None:
        n = len(texts)
    model, _ = pipeline.load_and_apply(teacher, teacher_recipe)
    g = torch.Generator().manual_seed(seed)
    special = set(tok.all_special_ids)
    vocab = [i for i in range(len(tok)) if i not in special]
    rows = []
    for start in progress(range(0, n, batch), desc="teacher data", total=-(-n // batch), leave=True):
        size = min(batch, n - start)
        if texts is not None:
            ids, valid = encode(tok, texts[start : start + size], chat=bool(getattr(tok, "chat_template", None)))
            cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed + start)
            outs, _ = generate_ids(model, tok, ids, valid, cfg)
            rows += [{"prompt": p, "completion": o.text} for p, o in zip(texts[start : start + size], outs)]
            continue
        first = torch.tensor([vocab[int(i)] for i in torch.randint(len(vocab), (size,), generator=g)])[:, None]
        ids, valid = first, torch.ones_like(first, dtype=torch.bool)
        if greedy_first:
            outs, _ = generate_ids(model, None, ids, valid, SamplingConfig(max_new_tokens=greedy_first))
            width = 1 + max(len(o.tokens) for o in outs)
            ids = torch.full((size, width), tok.pad_token_id or 0)
            valid = torch.zeros(size, width, dtype=torch.bool)
            for i, o in enumerate(outs):  # left-padded: the prompt ends at the last column
                row = [int(first[i])] + o.tokens
                ids[i, width - len(row) :], valid[i, width - len(row) :] = torch.tensor(row), True
        cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed + start)
        outs, _ = generate_ids(model, None, ids, valid, cfg)
        for i, o in enumerate(outs):
            text = tok.decode(ids[i][valid[i]].tolist() + o.tokens, skip_special_tokens=True)
            if text.strip():
                rows.append({"text": text})
    if not rows:
        raise EfflmError("the teacher wrote no text")
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return {"rows": len(rows), "out": str(out)}


def _read_prompts(path: str) -> list[str]:
    import json

    p = Path(path)
    if not p.is_file():
        raise EfflmError(f"prompts file not found: {p}")
    texts = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise EfflmError(f"{p}:{i}: not valid JSON") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise EfflmError(f"{p}:{i}: expected an object with a non-empty prompt")
        texts.append(row["prompt"])
    if not texts:
        raise EfflmError(f"{p}: no prompts")
    return texts
