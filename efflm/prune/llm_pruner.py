"""LLM-Pruner: On the Structural Pruning of Large Language Models.

arXiv 2305.11627 (Ma, Fang, Wang; NeurIPS 2023).
Algorithm: find the coupled structures of each decoder layer — an MLP channel j is row j of
gate and up plus column j of down; an attention head is its q rows and o columns (with its
k/v rows when a whole key/value group goes). Score each structure by the first-order Taylor
importance Σ|w · ∂L/∂w| over its weights (gradients of the LM loss on calibration text) or
by its squared weight norm, remove the lowest, and (optionally) recover with LoRA.
Differences from the reference code: every layer loses the same number of channels and
heads (chosen per layer by importance), so the result is an ordinary, smaller Hugging Face
model whose config says its new sizes — plain transformers loads it; under GQA a head count
is removed evenly from every key/value group, or as whole groups; no recovery fine-tuning
here (the finetune family does that).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from efflm.calib.gradients import check_grad_len, linear_gradients
from efflm.core.errors import ConfigError
from efflm.core.fields import opt
from efflm.core.registry import MethodConfig, register
from efflm.models.arch import decoder_layers, layout_for


def _plan(n_heads: int, n_kv: int, remove: int) -> tuple[str, int] | None:
    per = n_heads // n_kv
    if remove == 0:
        return "none", 0
    if remove % n_kv == 0 and remove // n_kv < per:
        return "per_group", remove // n_kv
    if remove % per == 0 and remove // per < n_kv:
        return "groups", remove // per
    return None


def head_plan(n_heads: int, n_kv: int, remove: int) -> tuple[str, int]:
    """How to remove ``remove`` query heads and keep every KV group the same size:
    ("per_group", r): r query heads from each group; ("groups", g): g whole groups."""
    plan = _plan(n_heads, n_kv, remove)
    if plan is not None:
        return plan
    if remove >= n_heads:
        raise ConfigError(f"llm_pruner: head_ratio would remove all {n_heads} heads of every layer")
    valid = [f"{r / n_heads:.3f}" for r in range(1, n_heads) if _plan(n_heads, n_kv, r)]
    raise ConfigError(
        f"llm_pruner: removing {remove} of {n_heads} heads breaks GQA grouping ({n_kv} key/value "
        f"groups of {n_heads // n_kv}); valid head_ratio values: {', '.join(valid) or 'none'}"
    )


def _head_dim(hf_config: Any) -> int:
    return getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads


def pruned_config(hf_config: Any, cfg: "LLMPrunerConfig") -> Any:
    """The config of the pruned model (also the registry's model check: raises before any work)."""
    if layout_for(hf_config).experts:
        raise ConfigError(f"llm_pruner: {hf_config.model_type} has mixture-of-experts MLPs; its dependency "
                          "groups are a dense MLP's channels (prune the experts with an unstructured or N:M method)")  # fmt: skip
    width = layout_for(hf_config).dense_width
    inter = getattr(hf_config, width)
    keep = int(round(inter * (1 - cfg.ratio) / cfg.multiple_of)) * cfg.multiple_of
    if keep < cfg.multiple_of or (cfg.ratio > 0 and keep >= inter):
        raise ConfigError(
            f"llm_pruner: ratio {cfg.ratio} keeps {keep} of {inter} MLP channels after rounding to a "
            f"multiple of {cfg.multiple_of}; choose another ratio or multiple_of"
        )
    n_heads, n_kv = (
        hf_config.num_attention_heads,
        getattr(hf_config, "num_key_value_heads", None) or hf_config.num_attention_heads,
    )
    remove = int(round(cfg.head_ratio * n_heads))
    if remove and not layout_for(hf_config).head_dim_free:
        raise ConfigError(f"llm_pruner: {hf_config.model_type}'s attention is as wide as its hidden size; "
                          "heads cannot be removed (use head_ratio 0)")  # fmt: skip
    kind, count = head_plan(n_heads, n_kv, remove)
    out = copy.deepcopy(hf_config)
    out.head_dim = _head_dim(hf_config)  # stays; it must not be re-derived from hidden / heads
    setattr(out, width, keep if cfg.ratio > 0 else inter)
    out.num_attention_heads = n_heads - remove
    if hasattr(hf_config, "num_key_value_heads") or kind == "groups":
        out.num_key_value_heads = n_kv - count if kind == "groups" else n_kv
    return out


def _keep(scores: torch.Tensor, k: int) -> torch.Tensor:
    return torch.topk(scores, k).indices.sort().values


def mlp_keep(elem: dict[str, torch.Tensor], ins: list[str], out: str, keep: int) -> torch.Tensor:
    """Indices of the kept MLP channels by the summed importance of their coupled weights: the rows
    of the Linears reading the MLP's input (gate and up; OPT's fc1) and the columns of its output."""
    return _keep(sum(elem[n].sum(1) for n in ins) + elem[out].sum(0), keep)


def heads_keep(
    elem: dict[str, torch.Tensor], n_heads: int, n_kv: int, head_dim: int, plan: tuple[str, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept query heads, kept key/value heads), sorted, grouping preserved."""
    per = n_heads // n_kv
    q = elem["q"].reshape(n_heads, head_dim, -1).sum((1, 2)) + elem["o"].reshape(-1, n_heads, head_dim).sum((0, 2))
    kind, count = plan
    if kind == "per_group":
        within = torch.stack([_keep(g, per - count) for g in q.reshape(n_kv, per)])
        return (within + per * torch.arange(n_kv).unsqueeze(1)).flatten(), torch.arange(n_kv)
    if kind == "groups":
        kv = elem["k"].reshape(n_kv, -1).sum(1) + elem["v"].reshape(n_kv, -1).sum(1)
        groups = _keep(q.reshape(n_kv, per).sum(1) + kv, n_kv - count)
        return (groups.unsqueeze(1) * per + torch.arange(per)).flatten(), groups
    return torch.arange(n_heads), torch.arange(n_kv)


def _rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    return (heads.unsqueeze(1) * head_dim + torch.arange(head_dim)).flatten()


@dataclass(frozen=True)
class LLMPrunerConfig(MethodConfig):
    """Structured pruning into a smaller dense model (same size for every layer)."""

    method = "llm_pruner"
    ratio: float = opt(
        0.2, "fraction of MLP intermediate channels removed (gate/up rows and down columns together), in [0, 1)"
    )
    head_ratio: float = opt(
        0.0, "fraction of attention heads removed, in [0, 1); must leave every key-value group the same size"
    )
    importance: str = opt(
        "taylor", "how channels and heads are ranked: taylor (first-order, calibration gradients) or magnitude"
    )
    multiple_of: int = opt(
        32, "the kept channel count is rounded to a multiple of this (≥ 1), so group-wise quantization still fits"
    )
    grad_len: int = opt(128, "tokens of each calibration window the gradients use (≥ 2; the paper: 128)")

    def __post_init__(self) -> None:
        check_grad_len(self)
        if not 0 <= self.ratio < 1 or not 0 <= self.head_ratio < 1:
            raise ConfigError(
                f"llm_pruner: ratio and head_ratio must be in [0, 1), got {self.ratio}, {self.head_ratio}"
            )
        if self.importance not in ("taylor", "magnitude"):
            raise ConfigError(f"llm_pruner: importance must be 'taylor' or 'magnitude', got {self.importance!r}")
        if self.multiple_of < 1:
            raise ConfigError(f"llm_pruner: multiple_of must be positive, got {self.multiple_of}")


@register(
    LLMPrunerConfig,
    family="prune",
    title="LLM-Pruner: On the Structural Pruning of Large Language Models",
    arxiv="2305.11627",
    needs_calibration=True,
    paper="llm-pruner",
    out_config=pruned_config,
)
def apply(model: nn.Module, config: LLMPrunerConfig, calib: Any) -> nn.Module:
    old = model.config
    new_cfg = pruned_config(old, config)
    layout = layout_for(old)
    q, k, v, o = layout.attn_linears
    *ins, out = layout.mlp_linears
    names = {"q": q, "k": k, "v": v, "o": o, **{n: n for n in layout.mlp_linears}}
    n_heads, hd = old.num_attention_heads, _head_dim(old)
    n_kv = getattr(old, "num_key_value_heads", None) or n_heads
    plan = head_plan(n_heads, n_kv, n_heads - new_cfg.num_attention_heads)
    grads = (
        linear_gradients(model, calib, squares=False, max_len=config.grad_len, desc="llm_pruner")
        if config.importance == "taylor"
        else None
    )
    state = model.state_dict()
    for i, layer in enumerate(decoder_layers(model)):
        prefix = f"{layout.layers}.{i}."
        elem = {}
        for key, name in names.items():
            w = layer.get_submodule(name).weight.detach().float()
            elem[key] = (w * grads[prefix + name]).abs() if grads is not None else w * w
        ch = mlp_keep(elem, ins, out, getattr(new_cfg, layout.dense_width))
        qh, kvh = heads_keep(elem, n_heads, n_kv, hd, plan)
        cuts = {
            **{n: (0, ch) for n in ins},
            out: (1, ch),
            q: (0, _rows(qh, hd)),
            o: (1, _rows(qh, hd)),
            k: (0, _rows(kvh, hd)),
            v: (0, _rows(kvh, hd)),
        }
        for name, (dim, idx) in cuts.items():
            for suffix in ("weight", "bias"):
                key = f"{prefix}{name}.{suffix}"
                if key in state and (suffix == "weight" or dim == 0):
                    state[key] = state[key].index_select(dim, idx).clone()
    dtype = next(model.parameters()).dtype
    pruned = type(model)(new_cfg).to(dtype)
    pruned.load_state_dict(state, strict=True)
    pruned.generation_config = model.generation_config
    pruned.efflm_notes = getattr(model, "efflm_notes", [])
    return pruned.eval()
