"""Architecture-specific module names and quirks, in one place only.

Every Llama-style decoder (Llama, Mistral, Qwen2, Qwen3, Gemma 2/3) names its blocks and Linears
the same way; a family's quirk is a field of ``Layout`` (Qwen3's per-head q/k norms ``qk_norms``,
Gemma's ``post_norms`` and ``norm_offset``) or a fact read from the config (``attention_windows``),
and a new layout is one more entry in ``LAYOUTS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch.nn as nn

from efflm.core.errors import EfflmError
from efflm.models.fused import FUSED


@dataclass(frozen=True)
class Layout:
    layers: str  # attribute path of the decoder layer list
    embed: str  # input embedding
    lm_head: str
    attn_linears: tuple[str, ...]  # inside one layer
    mlp_linears: tuple[str, ...]
    norms: tuple[str, str]  # before attention, before the MLP
    final_norm: str = "model.norm"
    rotary: str = "model.rotary_emb"  # module(x, position_ids) -> (cos, sin)
    attn: str = "self_attn"
    mlp: str = "mlp"  # module(x) -> MLP output, whatever its Linears are
    qk_norms: tuple[str, ...] = ()  # per-head RMSNorms of queries and keys inside ``attn``, before RoPE (Qwen3)
    post_norms: tuple[str, ...] = ()  # norms of the attention's and the MLP's outputs, before the residual (Gemma)
    norm_offset: float = 0.0  # every RMSNorm scales by (offset + weight) (Gemma: 1)
    rope_by_layer_type: bool = False  # ``rotary(x, positions, layer_type)``: one RoPE per layer type (Gemma 3)
    gguf_arch: str | None = "llama"  # llama.cpp's architecture name for the family (None: not written)
    gguf_interleaved_rope: bool = True  # llama.cpp's rope for it pairs adjacent dims (q/k rows permuted)
    gguf_swa_period: int = 0  # llama.cpp's arch slides the window on all but the last of every N layers (0: none)

    @property
    def linears(self) -> tuple[str, ...]:
        return self.attn_linears + self.mlp_linears

    @property
    def input_groups(self) -> tuple[tuple[str, ...], ...]:
        """Linears that read the same input tensor (one observer serves each group)."""
        q, k, v, o = self.attn_linears
        gate, up, down = self.mlp_linears
        return ((q, k, v), (o,), (gate, up), (down,))

    @property
    def input_sources(self) -> tuple[str, ...]:
        """The module whose output is each input group's input (AWQ/SmoothQuant fold scales into it):
        a norm's weight, or a Linear's output rows (v_proj feeds o_proj, up_proj feeds down_proj)."""
        return (self.norms[0], self.attn_linears[2], self.norms[1], self.mlp_linears[1])


_LLAMA = Layout(
    layers="model.layers",
    embed="model.embed_tokens",
    lm_head="lm_head",
    attn_linears=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
    mlp_linears=("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
    norms=("input_layernorm", "post_attention_layernorm"),
)
LAYOUTS: dict[str, Layout] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": replace(_LLAMA, gguf_arch="qwen2", gguf_interleaved_rope=False),
    "qwen3": replace(_LLAMA, qk_norms=("q_norm", "k_norm"), gguf_arch="qwen3", gguf_interleaved_rope=False),
    "gemma2": replace(
        _LLAMA,
        norms=("input_layernorm", "pre_feedforward_layernorm"),
        post_norms=("post_attention_layernorm", "post_feedforward_layernorm"),
        norm_offset=1.0,
        gguf_arch="gemma2",
        gguf_interleaved_rope=False,
        gguf_swa_period=2,
    ),
}
LAYOUTS["gemma3_text"] = replace(
    LAYOUTS["gemma2"], qk_norms=("q_norm", "k_norm"), rope_by_layer_type=True, gguf_arch=None, gguf_swa_period=0
)
SUPPORTED = tuple(sorted([*LAYOUTS, *FUSED]))  # FUSED: read as Llama (efflm.models.fused)


def layout_for(model_type: str) -> Layout:
    if model_type not in LAYOUTS:
        raise EfflmError(f"unsupported architecture {model_type!r}; supported: {', '.join(SUPPORTED)}")
    return LAYOUTS[model_type]


def attention_windows(hf_config: Any) -> list[int | None]:
    """Each decoder layer's sliding attention window (a query sees the keys less than ``window``
    positions back), or None for full attention: ``layer_types`` where the config has them (Gemma
    2/3's alternating layers), else ``sliding_window`` on every layer (Mistral)."""
    n, window = hf_config.num_hidden_layers, getattr(hf_config, "sliding_window", None)
    types = getattr(hf_config, "layer_types", None)
    if types:
        return [window if t == "sliding_attention" else None for t in types[:n]]
    return [window] * n


def in_features(hf_config: Any) -> dict[str, int]:
    """Input width of each decoder Linear, from the config alone (no weights needed)."""
    layout = layout_for(hf_config.model_type)
    hidden = hf_config.hidden_size
    head_dim = getattr(hf_config, "head_dim", None) or hidden // hf_config.num_attention_heads
    widths = {name: hidden for name in layout.linears}
    widths["self_attn.o_proj"] = hf_config.num_attention_heads * head_dim
    widths["mlp.down_proj"] = hf_config.intermediate_size
    return widths


def out_features(hf_config: Any) -> dict[str, int]:
    """Output width of each decoder Linear, from the config alone."""
    layout = layout_for(hf_config.model_type)
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    kv = (getattr(hf_config, "num_key_value_heads", None) or hf_config.num_attention_heads) * head_dim
    q, k, v, o = layout.attn_linears
    gate, up, down = layout.mlp_linears
    return {
        q: hf_config.num_attention_heads * head_dim,
        k: kv,
        v: kv,
        o: hf_config.hidden_size,
        gate: hf_config.intermediate_size,
        up: hf_config.intermediate_size,
        down: hf_config.hidden_size,
    }


def get_module(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path)


def set_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return get_module(model, layout_for(model.config.model_type).layers)


def module_names(hf_config: Any) -> list[str]:
    """Full names of every decoder Linear (then the head and the embeddings), from the config alone."""
    layout = layout_for(hf_config.model_type)
    n = hf_config.num_hidden_layers
    return [f"{layout.layers}.{i}.{name}" for i in range(n) for name in layout.linears] + [layout.lm_head, layout.embed]


def decoder_linears(model: nn.Module, select: Callable[[str], bool] | None = None):
    """(full path, module) of every Linear inside the decoder layers (those ``select`` accepts), in
    forward order.

    On a layer-streamed model (``efflm.models.streaming``) the layers are read as iteration
    reaches them and handed on after their last Linear: iterate once, keep no module."""
    from efflm.models.streaming import stream_of

    linears = _Linears(model, layout_for(model.config.model_type), select)
    return linears if stream_of(model) is not None else list(linears)


class _Linears:
    def __init__(self, model: nn.Module, layout: Layout, select: Callable[[str], bool] | None):
        self.model, self.layout, self.select = model, layout, select

    def __len__(self) -> int:
        n = len(decoder_layers(self.model))
        names = [f"{self.layout.layers}.{i}.{name}" for i in range(n) for name in self.layout.linears]
        return sum(1 for p in names if self.select is None or self.select(p))

    def __iter__(self):
        from efflm.models.streaming import each_layer

        for i, layer in each_layer(self.model):
            for name in self.layout.linears:
                path = f"{self.layout.layers}.{i}.{name}"
                if self.select is None or self.select(path):
                    yield path, get_module(layer, name)
