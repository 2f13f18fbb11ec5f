"""Tasks through lm-evaluation-harness, for ``efflm eval --tasks``, ``efflm bench --tasks`` and
``efflm lm-eval`` (lm-eval's own command line with efflm's model and tasks registered).

lm-eval's ``lm_eval`` command finds models only in its own registry, which a third-party
package cannot extend from outside the process; ``efflm lm-eval ARGS`` is that same command
with ``--model efflm`` registered and efflm's offline tasks on its ``--include_path``.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any

from efflm.core.errors import EfflmError

_MANAGERS: dict[tuple, Any] = {}


def task_dir() -> str:
    from efflm.eval.offline_tasks import TASK_DIR

    return str(TASK_DIR)


def _manager(defaults: bool = True, extra: tuple[str, ...] = ()):
    """lm-eval's task index with efflm's offline tasks, the directories of task files given by
    path (``extra``) and, with ``defaults``, lm-eval's own tasks."""
    key = (defaults, extra)
    if key not in _MANAGERS:
        try:
            from lm_eval.tasks import TaskManager
        except ImportError:
            raise EfflmError("tasks need lm-evaluation-harness: pip install 'efflm[tasks]'") from None
        _MANAGERS[key] = TaskManager(include_path=[task_dir(), *extra], include_defaults=defaults)
    return _MANAGERS[key]


def _task_file(path: Path) -> str:
    """The task a YAML task file defines; a file that does not parse is an error."""
    from lm_eval.tasks._yaml_loader import load_yaml

    if not path.is_file():
        raise EfflmError(f"task file not found: {path}")
    try:
        cfg = load_yaml(path, resolve_func=False)
    except Exception as e:  # yaml's errors, a bad include, a non-mapping document
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EfflmError(f"{path}: task file does not parse: {first}") from None
    if not isinstance(cfg.get("task"), str):
        raise EfflmError(f"{path}: task file does not parse: no `task:` name in it")
    return cfg["task"]


def check_tasks(spec: str) -> tuple[list[str], tuple[str, ...]]:
    """``(task names, directories of task files)`` of a comma-separated list of task names or
    lm-eval task YAML files; an unknown name is an error naming the closest ones."""
    entries = [t.strip() for t in spec.split(",") if t.strip()]
    if not entries:
        raise EfflmError("--tasks: give at least one task name")
    names, extra = [], []
    for e in entries:
        if e.endswith((".yaml", ".yml")):
            names.append(_task_file(Path(e)))
            extra.append(str(Path(e).resolve().parent))
        else:
            names.append(e)
    extra_t = tuple(dict.fromkeys(extra))
    own = _manager(False, extra_t).all_tasks
    unknown = [t for t in names if t not in own]
    if unknown:
        every = _manager(True, extra_t).all_tasks
        unknown = [t for t in unknown if t not in every]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(_manager(True, extra_t).all_tasks), n=3)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise EfflmError(f"unknown task {unknown[0]!r}{hint} (efflm's offline tasks: {', '.join(sorted(own))})")
    return names, extra_t


def run_tasks(model: Any, tok: Any, names: list[str], limit: int | None = None, batch_size: int = 8,
              chat: bool = False, extra: tuple[str, ...] = ()) -> dict[str, dict[str, float]]:  # fmt: skip
    """``{task: {metric: value, metric_stderr: value}}`` of ``model`` on lm-eval's tasks, through
    ``EfflmLM`` (efflm's forward and decode path)."""
    import lm_eval

    from efflm.eval.lm_eval_model import EfflmLM

    lm = EfflmLM(loaded=(model, tok), batch_size=batch_size)
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=names,
        task_manager=_manager(not all(n in _manager(False, extra).all_tasks for n in names), extra),
        limit=limit,
        log_samples=False,
        apply_chat_template=chat,
        bootstrap_iters=1000,
    )
    results = {}
    for task, metrics in out["results"].items():
        row = {}
        for key, value in metrics.items():
            name, _, filt = key.partition(",")
            if filt and isinstance(value, (int, float)) and not isinstance(value, bool):
                row[name] = float(value) if value is not None and math.isfinite(float(value)) else None
        results[task] = row
    return results


def headline(metrics: dict[str, float]) -> tuple[str, float | None, float | None]:
    """The metric a task is ranked by: accuracy (normalized where there is one), else exact match."""
    for name in ("acc_norm", "acc", "exact_match"):
        if name in metrics:
            return name, metrics[name], metrics.get(f"{name}_stderr")
    name = next(iter(k for k in metrics if not k.endswith("_stderr")), "")
    return name, metrics.get(name), metrics.get(f"{name}_stderr")


def cli(argv: list[str]) -> int:
    """``efflm lm-eval ARGS``: lm-eval's command line with efflm's model and tasks registered."""
    import sys

    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError:
        raise EfflmError("efflm lm-eval needs lm-evaluation-harness: pip install 'efflm[tasks]'") from None
    import efflm.eval.lm_eval_model  # noqa: F401  (registers --model efflm)

    args = list(argv)
    if "--include_path" not in args and "--tasks" in args:
        args += ["--include_path", task_dir()]
    sys.argv = ["lm_eval", *args]
    cli_evaluate()
    return 0
