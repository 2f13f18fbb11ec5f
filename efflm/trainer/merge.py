"""An adapter's other uses: load it (unmerged) onto its base for generate/eval/bench, and fold it
into the base — a quantized base re-quantized on its own grid, with the perplexity drift measured."""

from __future__ import annotations

from pathlib import Path

import torch

from efflm.core import recipe as recipes
from efflm.core.errors import EfflmError
from efflm.finetune.peft_files import load_adapter, read_adapter_config
from efflm.trainer.batches import EVAL_SEQ_LEN, EVAL_WINDOWS
from efflm.trainer.checkpoints import base_identity


def load_model(model_spec: str, recipe: recipes.Recipe, adapter: str | Path | None = None):
    """``(model, tokenizer)``: the base after ``recipe``, with the adapter (unmerged) if given."""
    from efflm import pipeline

    if adapter is None:
        return pipeline.load_and_apply(model_spec, recipe)
    config, meta = read_adapter_config(adapter)
    hf_config = pipeline.validate(model_spec, recipe)
    from efflm.methods import check_for_model

    check_for_model(hf_config, config)
    from efflm.finetune.peft_files import check_base

    check_base(Path(adapter), meta, base_identity(model_spec, recipe)["hash"])
    model, tok = pipeline.load_and_apply(model_spec, recipe)
    model, _ = load_adapter(model, adapter)
    return model, tok


MERGEABLE = ("lora", "dora", "lora_fa", "dylora", "qlora", "ia3", "adalora")


def _requantize(adapter: torch.nn.Module, merged: torch.nn.Linear) -> torch.nn.Module:
    """The merged weight back on the base's own storage: its grid, NF4, or its zero mask."""
    from efflm.nn.module_registry import role
    from efflm.nn.nf4_linear import NF4Linear
    from efflm.quantize.grid import to_quant_linear

    base = adapter.base
    if isinstance(base, NF4Linear):
        return NF4Linear.from_linear(merged, base.block, base.scale_block)
    if role(base) == "weight_grid":
        ql = to_quant_linear(merged, base.bits, base.group_size, base.symmetric)
        ql.set_compute_dtype(base.compute_dtype)
        return ql
    if isinstance(base, torch.nn.Linear):
        zeros = base.weight == 0
        if zeros.float().mean() >= 0.1:  # a pruned base keeps every zero
            with torch.no_grad():
                merged.weight.masked_fill_(zeros, 0.0)
        return merged
    raise EfflmError(f"cannot merge into a {type(base).__name__} base (its storage cannot hold a dense update)")


def merge(model_spec: str, recipe: recipes.Recipe, adapter: str | Path, out: str | Path) -> dict:
    """Fold the adapter into the base; a quantized base is re-quantized on its own grid and the
    perplexity drift that costs is measured (unmerged vs merged, same windows)."""
    from efflm.datasets.text import eval_tokens
    from efflm.eval.metrics import perplexity
    from efflm.io.save import save
    from efflm.nn.adapters import adapter_modules
    from efflm.nn.module_registry import role

    out = Path(out)
    if out.exists():
        raise EfflmError(f"output exists: {out} (choose another --out)")
    to_gguf = out.suffix == ".gguf"  # the merged model as one llama.cpp file
    if to_gguf:
        from efflm.io import gguf_export
        from efflm.models.sources import gguf_source

        gguf_export.check_recipe(recipe)
        gguf_export.check_source(model_spec, gguf_source(model_spec))
    config, _ = read_adapter_config(adapter)
    if config.method not in MERGEABLE:
        raise EfflmError(
            f"{config.method} adapters are not a weight update and cannot be merged (apply with --adapter)"
        )
    model, tok = load_model(model_spec, recipe, adapter)
    adapters = adapter_modules(model)
    for path, m in adapters.items():
        base = m.base
        if not (isinstance(base, torch.nn.Linear) or role(base) in ("weight_grid", "nf4")):
            raise EfflmError(f"cannot merge into {path}: a {type(base).__name__} base cannot hold a dense update")
    quantized = any(not isinstance(m.base, torch.nn.Linear) for m in adapters.values())
    ids = eval_tokens(tok, EVAL_SEQ_LEN * EVAL_WINDOWS)
    before = perplexity(model, ids, EVAL_SEQ_LEN, EVAL_WINDOWS)["ppl"] if quantized else None
    from efflm.finetune.adapter import merge as fold

    with torch.no_grad():
        fold(model, _requantize)
    result = {"adapters": len(adapters), "quantized": quantized}
    if quantized:
        after = perplexity(model, ids, EVAL_SEQ_LEN, EVAL_WINDOWS)["ppl"]
        result.update({"ppl_unmerged": before, "ppl_merged": after, "drift": after / before - 1})
        result["note"] = (
            f"merged {len(adapters)} adapters and re-quantized on the base's grid: perplexity {before:.3f} "
            f"unmerged -> {after:.3f} merged ({result['drift'] * 100:+.2f}%)"
        )
    else:
        result["note"] = f"merged {len(adapters)} adapters into the dense base"
    if to_gguf:
        gguf_export.export(model, gguf_source(model_spec), out, tok)
    else:
        save(model, tok, out, recipes.to_yaml(recipe))
    return result
