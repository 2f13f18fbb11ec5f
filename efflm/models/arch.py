"""Architecture-specific module names and quirks, in one place only.

Every Llama-style decoder (Llama, Mistral, Qwen2, Qwen3, Gemma 2/3, the MoE families) names its
blocks and Linears the same way; a family's quirk is a field of ``Layout`` (Qwen3's per-head q/k
norms ``qk_norms``, Gemma's ``post_norms`` and ``norm_offset``, a MoE block's ``experts``, OPT's
``layer_norm`` and learned ``positions``) or a fact read from the config (``attention_windows``),
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
    rotary: str | None = "model.rotary_emb"  # module(x, position_ids) -> (cos, sin); None: no RoPE
    attn: str = "self_attn"
    mlp: str | None = "mlp"  # module(x) -> MLP output, whatever its Linears are (None: mlp_linears in the layer)
    mlp_out: str = "down_proj"  # the MLP's output Linear (the rest of ``mlp_linears`` read its input)
    mlp_up: str | None = "up_proj"  # the Linear whose output rows feed ``mlp_out`` linearly (None: a nonlinearity)
    dense_width: str = "intermediate_size"  # the config field of the MLP's width
    layer_norm: bool = False  # LayerNorm with a bias (OPT), not RMSNorm
    positions: str | None = None  # learned absolute position embeddings (OPT: looked up at position + 2)
    head_dim_free: bool = True  # the attention's width is heads × head_dim (OPT's is the hidden size: heads stay)
    aliases: tuple[tuple[str, str], ...] = ()  # Llama's short Linear names -> this family's (adapter targets)
    qk_norms: tuple[str, ...] = ()  # per-head RMSNorms of queries and keys inside ``attn``, before RoPE (Qwen3)
    post_norms: tuple[str, ...] = ()  # norms of the attention's and the MLP's outputs, before the residual (Gemma)
    norm_offset: float = 0.0  # every RMSNorm scales by (offset + weight) (Gemma: 1)
    rope_by_layer_type: bool = False  # ``rotary(x, positions, layer_type)``: one RoPE per layer type (Gemma 3)
    gguf_arch: str | None = "llama"  # llama.cpp's architecture name for the family (None: not written)
    gguf_interleaved_rope: bool = True  # llama.cpp's rope for it pairs adjacent dims (q/k rows permuted)
    gguf_swa_period: int = 0  # llama.cpp's arch slides the window on all but the last of every N layers (0: none)
    gguf_own_output: bool = False  # llama.cpp's arch needs ``output.weight`` even when the head is tied
    experts: str | None = None  # sparse MoE: the experts inside a layer (``efflm.nn.experts``); mlp is the block
    shared_expert: str | None = None  # an MLP every token also goes through (Qwen2-MoE), beside the routed experts
    n_experts: str = "num_experts"  # the config field counting the routed experts
    expert_width: str = "moe_intermediate_size"  # the config field of one expert's intermediate width
    file_renames: tuple[tuple[str, str], ...] = ()  # how the family's checkpoints name tensors: (ours, theirs)
    routers: tuple[str, ...] = ()  # a MoE block's routing Linears: never compressed, exported in full precision

    @property
    def linears(self) -> tuple[str, ...]:
        return self.attn_linears + self.mlp_linears

    @property
    def input_groups(self) -> tuple[tuple[str, ...], ...]:
        """Linears that read the same input tensor (one observer serves each group). In a MoE block
        every expert's gate and up read the normed hidden states (calibration routes every token
        through every expert: ``efflm.nn.experts.route_all``), and each down projection its own."""
        q, k, v, o = self.attn_linears
        ins = tuple(n for n in self.mlp_linears if not n.endswith(self.mlp_out))
        return ((q, k, v), (o,), ins, *((n,) for n in self.mlp_linears if n.endswith(self.mlp_out)))

    @property
    def input_sources(self) -> tuple[str | None, ...]:
        """The module whose output is each input group's input (AWQ/SmoothQuant fold scales into it):
        a norm's weight, or a Linear's output rows (v_proj feeds o_proj, up_proj feeds down_proj).
        None where no fold is exact: a MoE block's norm also feeds its router, which stays as it is."""
        outs = [n for n in self.mlp_linears if n.endswith(self.mlp_out)]
        ups = tuple(n.removesuffix(self.mlp_out) + self.mlp_up if self.mlp_up else None for n in outs)
        return (self.norms[0], self.attn_linears[2], None if self.experts else self.norms[1], *ups)

    def for_config(self, hf_config: Any) -> "Layout":
        """This layout for one config: a MoE block's Linears named expert by expert (the shared
        expert first, as it runs first), so every Linear of the model is one of ``linears``; a
        config this layout cannot compute is refused in one line."""
        if self.layer_norm and (
            not getattr(hf_config, "do_layer_norm_before", True)
            or getattr(hf_config, "word_embed_proj_dim", hf_config.hidden_size) != hf_config.hidden_size
        ):
            raise EfflmError(f"{hf_config.model_type}: norms after the residual or a projected embedding "
                             "(OPT-350m) are not supported; every other OPT size is")  # fmt: skip
        if self.experts is None:
            return self
        if getattr(hf_config, "mlp_only_layers", None) or getattr(hf_config, "decoder_sparse_step", 1) != 1:
            raise EfflmError(
                f"{hf_config.model_type}: dense MLP layers between the sparse MoE layers are not supported"
            )
        own = ("gate_proj", "up_proj", "down_proj")
        shared = tuple(f"{self.shared_expert}.{n}" for n in own) if self.shared_expert else ()
        n = getattr(hf_config, self.n_experts)
        return replace(self, mlp_linears=shared + tuple(f"{self.experts}.{e}.{p}" for e in range(n) for p in own))


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
_MOE = replace(_LLAMA, mlp_linears=(), experts="mlp.experts", routers=("mlp.gate",))
LAYOUTS["mixtral"] = replace(
    _MOE,
    n_experts="num_local_experts",
    expert_width="intermediate_size",
    file_renames=((".mlp.", ".block_sparse_moe."), (".gate_proj.", ".w1."), (".up_proj.", ".w3."),
                  (".down_proj.", ".w2.")),
)  # fmt: skip
LAYOUTS["qwen2_moe"] = replace(
    _MOE,
    shared_expert="mlp.shared_expert",
    routers=("mlp.gate", "mlp.shared_expert_gate"),
    gguf_arch="qwen2moe",
    gguf_own_output=True,
    gguf_interleaved_rope=False,
)
LAYOUTS["qwen3_moe"] = replace(_MOE, qk_norms=("q_norm", "k_norm"), gguf_arch="qwen3moe", gguf_interleaved_rope=False)
LAYOUTS["opt"] = Layout(
    layers="model.decoder.layers",
    embed="model.decoder.embed_tokens",
    lm_head="lm_head",
    attn_linears=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"),
    mlp_linears=("fc1", "fc2"),
    norms=("self_attn_layer_norm", "final_layer_norm"),
    final_norm="model.decoder.final_layer_norm",
    rotary=None,
    mlp=None,
    mlp_out="fc2",
    mlp_up=None,
    dense_width="ffn_dim",
    layer_norm=True,
    positions="model.decoder.embed_positions",
    head_dim_free=False,
    aliases=(("o_proj", "out_proj"), ("gate_proj", "fc1"), ("up_proj", "fc1"), ("down_proj", "fc2")),
    gguf_arch=None,
)
LAYOUTS["gemma3_text"] = replace(
    LAYOUTS["gemma2"], qk_norms=("q_norm", "k_norm"), rope_by_layer_type=True, gguf_arch="gemma3", gguf_swa_period=6
)
SUPPORTED = tuple(sorted([*LAYOUTS, *FUSED]))  # FUSED: read as Llama (efflm.models.fused)


def layout_for(model: str | Any) -> Layout:
    """The layout of a model type, or of a config (a MoE config's expert Linears named: ``Layout.for_config``)."""
    model_type = model if isinstance(model, str) else model.model_type
    if model_type not in LAYOUTS:
        raise EfflmError(f"unsupported architecture {model_type!r}; supported: {', '.join(SUPPORTED)}")
    return LAYOUTS[model_type] if isinstance(model, str) else LAYOUTS[model_type].for_config(model)


def attention_windows(hf_config: Any) -> list[int | None]:
    """Each decoder layer's sliding attention window (a query sees the keys less than ``window``
    positions back), or None for full attention: ``layer_types`` where the config has them (Gemma
    2/3's alternating layers), else ``sliding_window`` on every layer (Mistral)."""
    n, window = hf_config.num_hidden_layers, getattr(hf_config, "sliding_window", None)
    types = getattr(hf_config, "layer_types", None)
    if types:
        return [window if t == "sliding_attention" else None for t in types[:n]]
    return [window] * n


def file_name(layout: Layout, name: str) -> str:
    """A tensor's (or module's) name as the family's checkpoints write it (Mixtral's MoE block:
    ``block_sparse_moe.gate`` and ``block_sparse_moe.experts.{e}.w1/w3/w2``, which transformers,
    vLLM and efflm's streaming reader read)."""
    name += "."  # a module name renames like its tensors'
    for ours, theirs in layout.file_renames:
        name = name.replace(ours, theirs)
    return name[:-1]


def _mlp_width(layout: Layout, hf_config: Any, name: str) -> int:
    """The intermediate width of the MLP (or expert, or shared expert) that Linear ``name`` is in."""
    if layout.experts and name.startswith(layout.experts + "."):
        return getattr(hf_config, layout.expert_width)
    if layout.shared_expert and name.startswith(layout.shared_expert + "."):
        return hf_config.shared_expert_intermediate_size
    return getattr(hf_config, layout.dense_width)


def _widths(hf_config: Any, inputs: bool) -> dict[str, int]:
    layout = layout_for(hf_config)
    hidden = hf_config.hidden_size
    head_dim = getattr(hf_config, "head_dim", None) or hidden // hf_config.num_attention_heads
    kv = (getattr(hf_config, "num_key_value_heads", None) or hf_config.num_attention_heads) * head_dim
    q, k, v, o = layout.attn_linears
    attn = {q: hidden, k: hidden, v: hidden, o: hf_config.num_attention_heads * head_dim}
    if not inputs:
        attn = {q: hf_config.num_attention_heads * head_dim, k: kv, v: kv, o: hidden}
    mlp = {}
    for name in layout.mlp_linears:
        width = _mlp_width(layout, hf_config, name)
        out = name.endswith(layout.mlp_out)
        mlp[name] = (width if out else hidden) if inputs else (hidden if out else width)
    return attn | mlp


def in_features(hf_config: Any) -> dict[str, int]:
    """Input width of each decoder Linear, from the config alone (no weights needed)."""
    return _widths(hf_config, inputs=True)


def out_features(hf_config: Any) -> dict[str, int]:
    """Output width of each decoder Linear, from the config alone."""
    return _widths(hf_config, inputs=False)


def get_module(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path)


def set_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return get_module(model, layout_for(model.config.model_type).layers)


def module_names(hf_config: Any) -> list[str]:
    """Full names of every decoder Linear (then the head and the embeddings), from the config alone."""
    layout = layout_for(hf_config)
    n = hf_config.num_hidden_layers
    return [f"{layout.layers}.{i}.{name}" for i in range(n) for name in layout.linears] + [layout.lm_head, layout.embed]


def decoder_linears(model: nn.Module, select: Callable[[str], bool] | None = None):
    """(full path, module) of every Linear inside the decoder layers (those ``select`` accepts), in
    forward order.

    On a layer-streamed model (``efflm.models.streaming``) the layers are read as iteration
    reaches them and handed on after their last Linear: iterate once, keep no module."""
    from efflm.models.streaming import stream_of

    linears = _Linears(model, layout_for(model.config), select)
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
