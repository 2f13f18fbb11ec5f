"""Export an efflm model as a GGUF file that llama.cpp runs, keeping GPTQ/AWQ-optimized codes.

Weight-grid modules (``QuantLinear``) with groups of 32 sit exactly on one of llama.cpp's legacy
block types (``efflm.io.gguf_blocks``: Q4_0 and Q8_0 symmetric, Q4_1 asymmetric 4-bit, Q5_0 and
Q5_1 at 5 bits), so their codes, scales and offsets are written as blocks unchanged — no
re-rounding; grids on a K-quant lattice (``scales: Q4_K`` ..., rows a multiple of 256) are written
as that K-quant (``efflm.io.gguf_kquants``) — and every tensor is checked against the ``gguf`` library's own dequantizer before the file is
written. The file itself is written by ``gguf.GGUFWriter``. A model loaded from a GGUF keeps
that file's metadata (tokenizer, chat template, hyperparameters); any other model — a Hugging
Face directory, a hub id, a tiny model — gets its hyperparameters from its config and its
tokenizer metadata from its tokenizer (``efflm.io.gguf_vocab``), under llama.cpp's name for its
family (``Layout.gguf_arch``). Norms are F32, the embedding Q8_0 (as llama.cpp ships it) via the
library's quantizer, float Linears F16.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from efflm.core.atomic import atomic_write_bytes_from
from efflm.core.errors import EfflmError
from efflm.io.gguf_blocks import BLOCKS, mxfp4, names
from efflm.io.gguf_kquants import kquant_for, pack
from efflm.io.gguf_vocab import tokenizer_kv
from efflm.models.arch import attention_windows, layout_for
from efflm.nn.fp_formats import fp4_kind_of_config, fp4_kind_of_module
from efflm.nn.module_registry import efflm_modules, role
from efflm.nn.superblocks import KQUANTS

_SKIP_KEYS = ("GGUF.", "general.architecture", "general.file_type")
FILE_TYPES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "MXFP4": "MXFP4_MOE"}  # llama.cpp's ftype names


def check_recipe(recipe: list) -> None:
    """Refuse, before any work, a recipe whose weights have no llama.cpp block type."""
    for cfg in recipe:
        grid = (getattr(cfg, "bits", None), getattr(cfg, "symmetric", True))
        kquant = getattr(cfg, "scales", "free") in KQUANTS
        if hasattr(cfg, "bits") and not kquant and not (grid in BLOCKS and cfg.group_size == 32):
            raise EfflmError(
                f"GGUF export: {cfg.label()} has no llama.cpp block type; with group_size 32: {names()}; "
                f"or scales {', '.join(KQUANTS)}"
            )
        if cfg.method == "zeroquant_fp" and fp4_kind_of_config(cfg) != "mxfp4":
            raise EfflmError(
                f"GGUF export: {cfg.label()}: llama.cpp's FP4 is MXFP4: weight_format e2m1, group_size 32, "
                "pow2_scales true, act_format none"
            )
        if cfg.method == "int8_embeddings":
            raise EfflmError("GGUF export: int8_embeddings is not needed: the export writes the embedding as Q8_0")
        if cfg.method in ("w8a8", "smoothquant"):
            raise EfflmError(f"GGUF export: {cfg.method} quantizes activations; llama.cpp files hold weights only")


def fp4_tensor(name: str, m: torch.nn.Module, permute_heads: int | None):
    """MXFP4 blocks of an FP4 grid with power-of-two group scales (``FPLinear``)."""
    import gguf

    if fp4_kind_of_module(m) != "mxfp4":
        raise EfflmError(
            f"GGUF export: {name} is not MXFP4 (E2M1 weights, groups of 32, power-of-two scales, no activation "
            "rounding: zeroquant_fp weight_format e2m1, group_size 32, pow2_scales true, act_format none)"
        )
    codes, scales, want = m.codes(), m.scales, m.dequantize(torch.float32)
    if permute_heads:
        codes, scales, want = (rope_permute(t, permute_heads) for t in (codes, scales, want))
    qtype = gguf.GGMLQuantizationType.MXFP4
    data = mxfp4(codes, scales)
    if not np.array_equal(gguf.quants.dequantize(data, qtype), want.numpy()):
        raise EfflmError(f"GGUF export: {name} does not round-trip through gguf's MXFP4 dequantizer")
    return data, qtype


def rope_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder q/k rows from Hugging Face's rotate-half layout to GGUF's interleaved layout."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def quant_tensor(name: str, m: torch.nn.Module, permute_heads: int | None):
    import gguf

    codes, scales, offsets = m.codes(), m.scales, getattr(m, "offsets", None)
    kq = kquant_for(m.bits, m.group_size, m.symmetric, m.in_features, scales, offsets)
    block = BLOCKS.get((m.bits, m.symmetric)) if m.group_size == 32 else None
    if block is None and kq is None:
        raise EfflmError(
            f"GGUF export: {name} is {m.bits}-bit g{m.group_size} {'symmetric' if m.symmetric else 'asymmetric'}, "
            f"which no llama.cpp block type holds; with group_size 32: {names()}; or a K-quant grid "
            f"(scales {', '.join(KQUANTS)})"
        )
    if permute_heads:
        codes, scales = rope_permute(codes, permute_heads), rope_permute(scales, permute_heads)
        offsets = None if offsets is None else rope_permute(offsets, permute_heads)
    if kq is not None:  # the lattice's super-blocks: smaller than the legacy block of the same grid
        qtype = gguf.GGMLQuantizationType[kq.name]
        data = pack(kq.name, codes, scales, offsets)
    else:
        qtype = gguf.GGMLQuantizationType[block[0]]
        data = block[1](codes, scales, offsets)
    want = m.dequantize(torch.float32)
    if permute_heads:
        want = rope_permute(want, permute_heads)
    if not np.array_equal(gguf.quants.dequantize(data, qtype), want.numpy()):
        raise EfflmError(f"GGUF export: {name} does not round-trip through gguf's {qtype.name} dequantizer")
    return data, qtype


def tensor_names(cfg):
    """llama.cpp's tensor name map for the model's family, and a function giving the head count by
    which a Linear's rows are permuted into llama.cpp's rotary order (None: not permuted)."""
    import gguf

    layout = layout_for(cfg.model_type)
    arch = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[layout.gguf_arch]
    heads = {layout.attn_linears[0]: cfg.num_attention_heads, layout.attn_linears[1]: cfg.num_key_value_heads}
    if not layout.gguf_interleaved_rope:
        heads = {}

    def permuted_heads(owner: str) -> int | None:
        return next((n for suffix, n in heads.items() if owner.endswith(suffix)), None)

    return gguf.get_tensor_name_map(arch, cfg.num_hidden_layers), permuted_heads


def _tensors(model: torch.nn.Module):
    """(gguf name, numpy data, ggml type or None for plain float) for every tensor llama.cpp needs;
    a MoE block's experts are stacked into one 3-D tensor per projection, as llama.cpp reads them."""
    stacks: dict[str, dict[int, tuple]] = {}
    n_experts = getattr(model.config, layout_for(model.config.model_type).n_experts, None)
    for gname, data, qtype, expert in _each_tensor(model):
        if expert is None:
            yield gname, data, qtype
            continue
        stack = stacks.setdefault(gname, {})
        stack[expert] = (data, qtype)
        if len(stack) == n_experts:
            kinds = {q for _, q in stack.values()}
            if len(kinds) != 1:
                raise EfflmError(f"GGUF export: the experts of {gname} are stored in different types")
            yield gname, np.stack([stack[e][0] for e in range(n_experts)]), kinds.pop()
            del stacks[gname]
    if stacks:
        raise EfflmError(f"GGUF export: {next(iter(stacks))} lacks some of its {n_experts} experts")


def _each_tensor(model: torch.nn.Module):
    """``_tensors``' rows, one Linear at a time, with the expert index of an expert's (else None)."""
    import re

    import gguf

    cfg = model.config
    layout = layout_for(cfg.model_type)
    names, permuted_heads = tensor_names(cfg)
    modules = dict(model.named_modules())
    tied = getattr(cfg, "tie_word_embeddings", False)
    expert_of = re.compile(rf"(.*\.{re.escape(layout.experts or '-')})\.(\d+)(\..*)$")
    for key, value in model.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if tied and owner == layout.lm_head:
            continue
        module = modules.get(owner)
        packed = role(module) in ("weight_grid", "fp_grid")
        name = f"{owner}.weight" if packed else key
        hit = expert_of.match(name)
        expert = int(hit.group(2)) if hit else None
        if hit:  # llama.cpp names the stack of every expert's projection
            name = hit.group(1) + hit.group(3)
        gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise EfflmError(f"GGUF export: no llama.cpp name for {key}")
        permute = permuted_heads(owner)
        if packed:
            if leaf != "qweight":
                continue  # scales travel inside the blocks
            write = quant_tensor if role(module) == "weight_grid" else fp4_tensor
            data, qtype = write(owner, module, permute)
            yield gname, data, qtype, expert
            continue
        w = value.float()
        if layout.routers and owner.endswith(layout.routers):  # routing stays in full precision
            yield gname, w.numpy(), None, expert
            continue
        if permute and leaf == "weight":
            w = rope_permute(w, permute)
        if owner == layout.embed:
            q8 = gguf.GGMLQuantizationType.Q8_0
            yield gname, gguf.quants.quantize(w.numpy(), q8), q8, expert
            if tied and layout.gguf_own_output:  # the tied head written out again where llama.cpp needs it
                yield "output.weight", gguf.quants.quantize(w.numpy(), q8), q8, None
        elif w.ndim == 2:
            yield gname, w.to(torch.float16).numpy(), None, expert
        elif leaf == "weight":  # a norm: llama.cpp scales by its weight alone (Gemma's 1 + w folded in)
            yield gname, (w + layout.norm_offset).numpy(), None, expert
        else:
            yield gname, w.numpy(), None, expert


def _copy_metadata(writer, template: Path, model: torch.nn.Module) -> None:
    import gguf

    reader = gguf.GGUFReader(template)
    if reader.fields["general.architecture"].contents() != "llama":
        raise EfflmError(f"GGUF export: template {template} is not a llama-architecture file")
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    override = {
        "llama.block_count": cfg.num_hidden_layers,
        "llama.embedding_length": cfg.hidden_size,
        "llama.feed_forward_length": cfg.intermediate_size,
        "llama.attention.head_count": cfg.num_attention_heads,
        "llama.attention.head_count_kv": cfg.num_key_value_heads,
        "llama.rope.dimension_count": head_dim,
        "llama.vocab_size": cfg.vocab_size,
    }
    for key, field in reader.fields.items():
        if key.startswith(_SKIP_KEYS):
            continue
        vtype = field.types[0]
        value = override.get(key, field.contents())
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, vtype, sub_type=sub)


def check_model(cfg) -> str:
    """llama.cpp's architecture name for a model with config ``cfg``; refuses, in one line, a model
    llama.cpp would run differently."""
    layout = layout_for(cfg.model_type)
    if getattr(cfg, "efflm_unfused_from", None) == "gpt2":
        return "gpt2"  # read as OPT, written as GPT-2's own layout (efflm.io.gguf_gpt2)
    if layout.gguf_arch is None:
        raise EfflmError(f"GGUF export does not write {cfg.model_type!r} models yet")
    rope_of(cfg)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if getattr(cfg, "query_pre_attn_scalar", head_dim) != head_dim:
        raise EfflmError(f"GGUF export: queries scaled by 1/sqrt({cfg.query_pre_attn_scalar}), not by the head "
                         f"dimension {head_dim}: llama.cpp tells those models apart by size, not by the file")  # fmt: skip
    windows = attention_windows(cfg)
    cuts = {w for w in windows if w is not None and w < cfg.max_position_embeddings}
    period = layout.gguf_swa_period
    if cuts and not period:
        raise EfflmError(
            f"GGUF export: llama.cpp's {layout.gguf_arch} architecture has no sliding window (this model's is "
            f"{min(cuts)} tokens of {cfg.max_position_embeddings})"
        )
    if period and [w is not None for w in windows] != [i % period < period - 1 for i in range(len(windows))]:
        raise EfflmError(
            f"GGUF export: llama.cpp's {layout.gguf_arch} slides the window on {period - 1} of every {period} "
            "layers, from the first; this model's layers differ"
        )
    return layout.gguf_arch


def rope_of(cfg) -> tuple[float, float | None]:
    """(base, linear scaling factor or None) of the RoPE llama.cpp is to apply; other kinds are
    refused. Gemma 3's local layers must be what llama.cpp fixes them to (base 10000, unscaled);
    the global layers' parameters are the file's."""
    params = getattr(cfg, "rope_parameters", None) or {}
    if layout_for(cfg.model_type).rope_by_layer_type:
        local = params.get("sliding_attention") or {}
        if local.get("rope_type", "default") != "default" or float(local.get("rope_theta", 10000.0)) != 10000.0:
            raise EfflmError("GGUF export: llama.cpp rotates Gemma 3's local layers at base 10000, unscaled; "
                             "this model's differ")  # fmt: skip
        params = params.get("full_attention") or {}
    kind = params.get("rope_type", "default")
    if kind not in ("default", "linear"):
        raise EfflmError(f"GGUF export: rope scaling {kind!r} is not written; plain or linear RoPE only")
    return float(params.get("rope_theta", 10000.0)), float(params["factor"]) if kind == "linear" else None


def check_source(spec: str, template: Path | None) -> None:
    """Refuse, before any work, a model (by its config and tokenizer) the export cannot write."""
    from efflm.models.sources import load_tokenizer, model_config

    cfg = model_config(spec)
    if check_model(cfg) != "llama" and template is not None:
        raise EfflmError(f"GGUF export: template metadata is for llama models, not {cfg.model_type!r}")
    if template is None:
        tokenizer_kv(load_tokenizer(spec), cfg.vocab_size)


def _hparams(writer, cfg, tokenizer: dict) -> None:
    """Hyperparameters from the config and tokenizer metadata from ``tok``, as llama.cpp reads them."""
    if check_model(cfg) == "gpt2":
        from efflm.io import gguf_gpt2

        writer.add_name(getattr(cfg, "_name_or_path", "") or "gpt2")
        gguf_gpt2.hparams(writer, cfg)
        for method, value in tokenizer.items():
            getattr(writer, method)(value)
        return
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer.add_name(getattr(cfg, "_name_or_path", "") or cfg.model_type)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    import gguf

    base, factor = rope_of(cfg)
    writer.add_rope_freq_base(base)
    if factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(factor)
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    for key, add in (("attn_logit_softcapping", writer.add_attn_logit_softcapping),
                     ("final_logit_softcapping", writer.add_final_logit_softcapping)):  # fmt: skip
        if getattr(cfg, key, None) is not None:
            add(float(getattr(cfg, key)))
    layout = layout_for(cfg.model_type)
    if layout.experts:  # a sparse MoE block
        writer.add_expert_count(getattr(cfg, layout.n_experts))
        writer.add_expert_used_count(cfg.num_experts_per_tok)
        if layout.expert_width != "intermediate_size":
            writer.add_expert_feed_forward_length(getattr(cfg, layout.expert_width))
        if layout.shared_expert:
            writer.add_expert_shared_feed_forward_length(cfg.shared_expert_intermediate_size)
    window = next((w for w in attention_windows(cfg) if w is not None), None)
    if window is not None:
        writer.add_sliding_window(window)
    for method, value in tokenizer.items():
        getattr(writer, method)(value)


def export(model: torch.nn.Module, template: Path | None, out: str | Path, tok=None) -> Path:
    """Write ``model`` to the GGUF file ``out`` (atomically); metadata from ``template`` (the GGUF
    the model came from) or else from its config and its tokenizer ``tok``."""
    import gguf

    out = Path(out)
    if out.exists() or out.is_symlink():
        raise EfflmError(f"output exists: {out} (choose another --out)")
    if out.suffix != ".gguf":
        raise EfflmError(f"GGUF export: --out must end in .gguf, got {out.name}")
    if template is None and tok is None:
        raise EfflmError("GGUF export needs the model's tokenizer (or the GGUF file it came from)")
    arch = check_model(model.config)
    tokenizer = tokenizer_kv(tok, model.config.vocab_size) if template is None else {}
    if template is not None and arch != "llama":
        raise EfflmError(f"GGUF export: template metadata is for llama models, not {model.config.model_type!r}")
    other = {n for n, m in efflm_modules(model).items() if role(m) not in ("weight_grid", "fp_grid", "experts")}
    if other:
        raise EfflmError(
            f"GGUF export writes float or weight-grid layers only, not {sorted(other)[0]} "
            f"({type(model.get_submodule(sorted(other)[0])).__name__})"
        )
    if arch == "gpt2":
        from efflm.io import gguf_gpt2

        tensors = list(gguf_gpt2.tensors(model))
    else:
        tensors = list(_tensors(model))
    quant = {t for name, _, t in tensors if t is not None and name != "token_embd.weight"}

    def write(path: Path) -> None:
        writer = gguf.GGUFWriter(path, arch)
        if template is not None:
            _copy_metadata(writer, template, model)
        else:
            _hparams(writer, model.config, tokenizer)
        # the file type names the Linears' most common block type (llama.cpp prints it; nothing reads it)
        main = max(quant, key=lambda t: sum(1 for _, _, q in tensors if q == t), default=None)
        kind = None if main is None else FILE_TYPES.get(main.name, main.name)
        file_type = gguf.LlamaFileType[f"MOSTLY_{kind}"] if kind is not None else gguf.LlamaFileType.MOSTLY_F16
        writer.add_file_type(file_type)
        for name, data, qtype in tensors:
            writer.add_tensor(name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    atomic_write_bytes_from(out, write, replace=False)
    return out
