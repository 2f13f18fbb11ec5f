"""lm-evaluation-harness's ``custom_dataset`` for efflm's offline tasks: the JSONL file beside
this one (made by ``efflm.eval.offline_tasks``), as the ``test`` split. Nothing is downloaded."""

import json
from pathlib import Path


def _rows(name: str) -> dict:
    import datasets

    text = (Path(__file__).resolve().parent / f"{name}.jsonl").read_text(encoding="utf-8")
    return {"test": datasets.Dataset.from_list([json.loads(line) for line in text.splitlines()])}


def cloze(**_) -> dict:
    return _rows("efflm_cloze")


def nextline(**_) -> dict:
    return _rows("efflm_nextline")


def instruct(**_) -> dict:
    return _rows("efflm_instruct")
