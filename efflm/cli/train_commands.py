"""The commands that train: ``efflm finetune``, ``distill-cache``, ``distill-data`` and ``merge``
(run orchestration is ``efflm.trainer``)."""

from __future__ import annotations

from efflm.cli.commands import recipe_arg
from efflm.core.errors import EfflmError


def cmd_finetune(a) -> int:
    from efflm import trainer

    cfg, train_cfg = trainer.read_method_recipe(a.method_recipe, a.steps)
    if a.teacher_recipe and not a.teacher:
        raise EfflmError("--teacher-recipe needs --teacher")
    teacher_recipe = recipe_arg(a.teacher_recipe)
    r = trainer.finetune(
        a.model, recipe_arg(a.recipe), cfg, train_cfg, a.data, a.out, resume=a.resume,
        db=None if a.no_eval else a.db, teacher=a.teacher, teacher_recipe=teacher_recipe,
        teacher_cache=a.teacher_cache, device=a.device, final_eval=not a.no_eval,
    )  # fmt: skip
    shown = {k: v for k, v in r.items() if k not in ("losses", "evals")}
    print(
        f"wrote {a.out} ({cfg.label()}): "
        + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
    )
    return 0


def cmd_distill_cache(a) -> int:
    from efflm import trainer
    from efflm.methods import get

    cfg, train_cfg = trainer.read_method_recipe(a.method_recipe, a.steps)
    if get(cfg.method).family != "distill":
        raise EfflmError(f"{a.method_recipe}: {cfg.method} is not a distillation method")
    r = trainer.build_cache(a.teacher, recipe_arg(a.teacher_recipe), a.model, train_cfg, a.data, a.out, a.k)
    print(
        f"wrote {a.out}: {r['tokens']} tokens, top-{r['k']}, {r['bytes']} bytes ({r['bytes_per_token']:.1f} per token)"
    )
    return 0


def cmd_distill_data(a) -> int:
    from efflm import trainer

    r = trainer.generate_data(
        a.teacher, recipe_arg(a.teacher_recipe), a.out, a.n, a.max_new_tokens, prompts=a.prompts,
        greedy_first=a.greedy_first, temperature=a.temperature, seed=a.seed,
    )  # fmt: skip
    print(f"wrote {r['out']}: {r['rows']} rows")
    return 0


def cmd_export_lora(a) -> int:
    from efflm.io import gguf_lora
    from efflm.models.sources import model_config

    out = gguf_lora.export(a.adapter, model_config(a.model), a.out)
    print(f"wrote {out} (llama.cpp LoRA adapter: llama-cli -m BASE.gguf --lora {out.name})")
    return 0


def cmd_merge(a) -> int:
    from efflm import trainer

    r = trainer.merge(a.model, recipe_arg(a.recipe), a.adapter, a.out)
    print(f"wrote {a.out}: {r['note']}")
    return 0
