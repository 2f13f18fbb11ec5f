"""Export a quantized efflm model as a compressed-tensors checkpoint (the format vLLM serves).

The writing is done by the ``compressed-tensors`` library itself: each weight-grid module
becomes an ``nn.Linear`` holding its exactly dequantized weight plus the library's
``weight_scale`` parameter, the library's ``pack-quantized`` compressor re-derives the integer
codes (exactly ours: round(w / s) gives back our codes, checked) and packs them into int32, and
``ModelCompressor.update_config`` writes the ``quantization_config`` that transformers and
vLLM read. Asymmetric grids export when their offsets are integer zero points (``o = −s·z``,
what ``scales: int_zero_point`` makes): the library stores z packed beside the codes; a min/max
grid's float offsets have no integer zero point and are refused. K-quant lattices (``scales:
Q4_K`` ...) are ordinary groups here.

W8A8 (``Int8Linear``: W8A8, SmoothQuant) becomes the ``int-quantized`` scheme vLLM's int8 kernels
run: int8 weights per output channel (ours, checked after the library compresses them) with
their scales in fp16, and dynamic per-token int8 input activations (the library's grid is
max|x| / 127.5 where efflm's is max|x| / 127, so activations may round differently by one step).
LLM.int8()'s float outlier columns have no compressed-tensors scheme and are refused.

FP8 (``FPLinear`` with E4M3 weights and one scale per output channel: ZeroQuant-FP with
``group_size: -1``) becomes the ``float-quantized`` scheme: float8_e4m3fn weights (ours, checked)
with fp16 channel scales, and dynamic per-token FP8 activations when the model has them
(``act_format: e4m3``) or weight-only FP8 otherwise.

MXFP4 (``FPLinear`` with E2M1 weights in groups of 32 and power-of-two scales: ZeroQuant-FP
with ``pow2_scales``) becomes ``mxfp4-pack-quantized``, weights only: two E2M1 codes a byte and
one E8M0 exponent per group, decompressed by the library to efflm's weights exactly. NVFP4
(E4M3 group scales under a global scale) has no efflm grid yet; 2:4 sparsity has no compressor
in compressed-tensors 0.19 (its ``ModelCompressor`` writes no sparsity config) — both refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from efflm.core.atomic import atomic_dir
from efflm.core.errors import EfflmError
from efflm.models.arch import file_name, layout_for, set_module
from efflm.nn.module_registry import efflm_modules
from efflm.nn.superblocks import zero_points

EXPORT_DTYPE = torch.float16  # fp16 holds efflm's fp16 scales exactly (bf16 would not)
GRIDS = ("rtn", "gptq", "awq")  # methods that leave weight-grid QuantLinears


def _scheme_key(m: torch.nn.Module) -> tuple[int, int, bool, bool]:
    return m.bits, m.group_size, m.group_size == m.in_features, m.symmetric


def quantization_config(groups: dict[tuple[int, int, bool, bool], list[str]]) -> Any:
    """A compressed-tensors QuantizationConfig with one config group per (bits, group size, symmetric)."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    config_groups = {}
    for i, ((bits, group_size, per_channel, symmetric), names) in enumerate(sorted(groups.items())):
        args = QuantizationArgs(
            num_bits=bits,
            type="int",
            symmetric=symmetric,
            strategy="channel" if per_channel else "group",
            group_size=None if per_channel else group_size,
        )
        config_groups[f"group_{i}"] = QuantizationScheme(targets=sorted(names), weights=args)
    return QuantizationConfig(config_groups=config_groups, format="pack-quantized")


def check_recipe(recipe: list) -> None:
    """Refuse, before any work, a recipe this exporter cannot write."""
    for cfg in recipe:
        if hasattr(cfg, "symmetric") and not cfg.symmetric and getattr(cfg, "scales", "free") == "free":
            raise EfflmError(
                f"compressed-tensors export: {cfg.label()} has float (min/max) offsets; compressed-tensors "
                "stores integer zero points: use scales: int_zero_point (or symmetric: true)"
            )
        if cfg.method == "zeroquant_fp" and not (_fp8_ok(cfg) or _mxfp4_ok(cfg)):
            raise EfflmError(
                f"compressed-tensors export: {cfg.label()}: FP8 is written as E4M3 weights with one scale per "
                "output channel (weight_format e4m3, group_size -1), MXFP4 as E2M1 weights in groups of 32 with "
                "power-of-two scales and no activation rounding (weight_format e2m1, group_size 32, pow2_scales "
                "true, act_format none)"
            )
        if cfg.method in ("llm_int8", "int8_embeddings"):
            raise EfflmError(
                f"compressed-tensors export: {cfg.method} has no compressed-tensors scheme; "
                "weight-only W4A16/W8A16 (rtn, gptq, awq) and W8A8 (w8a8, smoothquant) are written"
            )
    if {"w8a8", "smoothquant"} & {c.method for c in recipe} and any(c.method in GRIDS for c in recipe):
        raise EfflmError("compressed-tensors export: one scheme per export (W8A8 or a weight-only grid, not both)")


def _fp8_ok(cfg) -> bool:
    return cfg.weight_format == "e4m3" and cfg.group_size == -1


def _mxfp4_ok(cfg) -> bool:
    return cfg.weight_format == "e2m1" and cfg.group_size == 32 and cfg.pow2_scales and cfg.act_format in ("none", None)


def export(model: torch.nn.Module, tokenizer: Any, out: str | Path) -> Path:
    """Write ``model`` (with weight-grid modules) to ``out`` as a compressed-tensors checkpoint."""
    try:
        from compressed_tensors.quantization import apply_quantization_config
    except ImportError as e:
        raise EfflmError(
            "compressed-tensors export needs the compressed-tensors package (pip install 'efflm[interop]')"
        ) from e
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise EfflmError(f"output exists: {out} (choose another --out)")
    int8 = efflm_modules(model, "w8a8")
    if int8:
        return _export_w8a8(model, tokenizer, out, int8)
    fp = efflm_modules(model, "fp_grid")
    if fp and all(m.weight_format == "e2m1" for m in fp.values()):
        return _export_mxfp4(model, tokenizer, out, fp)
    if fp:
        return _export_fp8(model, tokenizer, out, fp)
    if set(efflm_modules(model)) - set(efflm_modules(model, "experts")) != set(efflm_modules(model, "weight_grid")):
        raise EfflmError(
            "compressed-tensors export supports weight-only QuantLinear models or W8A8 Int8Linear models "
            "(not int8 embeddings, activation-quantized grids or low-rank layers)"
        )
    quantized = efflm_modules(model, "weight_grid")
    if not quantized:
        raise EfflmError("compressed-tensors export needs a quantized model (no QuantLinear or Int8Linear found)")
    zeros = {n: zero_points(m.scales, m.offsets, m.bits) for n, m in quantized.items() if not m.symmetric}
    for name, z in zeros.items():
        if z is None:
            raise EfflmError(
                f"compressed-tensors export: {name}'s asymmetric grid has float offsets with no integer zero "
                "point; quantize with scales: int_zero_point (or symmetric: true)"
            )
    groups: dict[tuple[int, int, bool, bool], list[str]] = {}
    for name, m in quantized.items():
        groups.setdefault(_scheme_key(m), []).append(name)

    plain = _plain(model, quantized, lambda m: m.dequantize(torch.float32))  # round(w / s) is still q
    apply_quantization_config(plain, quantization_config(groups), show_progress=False)
    for name, m in quantized.items():
        linear = plain.get_submodule(name)
        linear.weight_scale.data = m.scales.to(EXPORT_DTYPE).reshape(linear.weight_scale.shape)
        half = 2 ** (m.bits - 1)  # the library's codes are signed: ours − 2^(b−1), zero points too
        z = zeros.get(name)
        if z is not None:
            zp = linear.weight_zero_point
            zp.data = (z - half).to(zp.dtype).reshape(zp.shape)
        codes = (
            linear.weight.float()
            / linear.weight_scale.float().repeat_interleave(m.group_size, dim=1)[:, : m.in_features]
        )
        want = m.codes().float() - (
            half if z is None else z.float().repeat_interleave(m.group_size, dim=1)[:, : m.in_features]
        )
        if not torch.equal(codes.round(), want):
            raise EfflmError(f"compressed-tensors export: {name} is not on its own grid")
    return _write(plain, "pack-quantized", tokenizer, out)


def _plain(model: torch.nn.Module, replaced: dict, weight_of) -> torch.nn.Module:
    """The model's transformers class in fp16: every tensor but those of ``replaced``, whose modules
    become ``nn.Linear``s holding ``weight_of(module)`` (and their bias)."""
    from transformers import AutoModelForCausalLM

    from efflm.nn.experts import unstack_experts

    plain = unstack_experts(AutoModelForCausalLM.from_config(model.config, dtype=EXPORT_DTYPE))  # experts: Linears
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(tuple(f"{n}." for n in replaced))}
    plain.load_state_dict(
        {k: v.to(EXPORT_DTYPE) if v.is_floating_point() else v for k, v in state.items()}, strict=False
    )
    plain.tie_weights()
    for name, m in replaced.items():
        linear = torch.nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, dtype=EXPORT_DTYPE)
        linear.weight.data = weight_of(m).to(EXPORT_DTYPE)
        if m.bias is not None:
            linear.bias.data = m.bias.data.to(EXPORT_DTYPE)
        set_module(plain, name, linear)
    return plain


def _per_channel(plain: torch.nn.Module, modules: dict, kind: str, dynamic: bool, fmt: str, scales_of) -> None:
    """One config group: 8-bit ``kind`` ("int" or "float") weights with a scale per output channel
    (``scales_of(module)``), and dynamic per-token 8-bit activations of the same kind if ``dynamic``."""
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        apply_quantization_config,
    )

    weights = QuantizationArgs(num_bits=8, type=kind, symmetric=True, strategy="channel")
    acts = QuantizationArgs(num_bits=8, type=kind, symmetric=True, strategy="token", dynamic=True) if dynamic else None
    scheme = QuantizationScheme(targets=sorted(modules), weights=weights, input_activations=acts)
    apply_quantization_config(
        plain, QuantizationConfig(config_groups={"group_0": scheme}, format=fmt), show_progress=False
    )
    for name, m in modules.items():
        scale = plain.get_submodule(name).weight_scale
        scale.data = scales_of(m).to(EXPORT_DTYPE).reshape(scale.shape)


def _write(plain: torch.nn.Module, fmt: str, tokenizer: Any, out: Path, check=None) -> Path:
    from compressed_tensors.compressors import ModelCompressor

    compressor = ModelCompressor.from_pretrained_model(plain, quantization_format=fmt)
    compressor.compress_model(plain)
    if check is not None:
        check(plain)
    from efflm.models.sources import hf_bars_follow_efflm

    with atomic_dir(out, replace=True) as tmp, hf_bars_follow_efflm():  # fails, deleting nothing, if out appeared
        plain.save_pretrained(tmp)
        compressor.update_config(str(tmp))
        _checkpoint_names(tmp, layout_for(plain.config))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out


def _checkpoint_names(path: Path, layout) -> None:
    """Rename the written tensors (and the config's module names) as the family's checkpoints name
    them (``models.arch.file_name``), where that differs from transformers' module names."""
    if not layout.file_renames:
        return
    import json

    from safetensors.torch import load_file, save_file

    for f in path.glob("*.safetensors"):
        save_file({file_name(layout, k): v for k, v in load_file(str(f)).items()}, str(f), metadata={"format": "pt"})
    index = path / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {file_name(layout, k): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2))
    config = json.loads((path / "config.json").read_text())
    for scheme in config["quantization_config"]["config_groups"].values():
        scheme["targets"] = [file_name(layout, t) for t in scheme["targets"]]
    (path / "config.json").write_text(json.dumps(config, indent=2))


def _export_w8a8(model: torch.nn.Module, tokenizer: Any, out: Path, int8: dict) -> Path:
    if set(efflm_modules(model)) != set(int8):
        raise EfflmError("compressed-tensors export: one scheme per export (W8A8 or a weight-only grid, not both)")
    if any(m.outlier_threshold for m in int8.values()):
        raise EfflmError(
            "compressed-tensors export: LLM.int8()'s float outlier columns have no compressed-tensors scheme"
        )
    plain = _plain(model, int8, lambda m: m.qweight.float() * m.wscale.to(EXPORT_DTYPE).float()[:, None])
    _per_channel(plain, int8, "int", True, "int-quantized", lambda m: m.wscale)

    def same_codes(compressed: torch.nn.Module) -> None:
        for name, m in int8.items():
            if not torch.equal(compressed.get_submodule(name).weight, m.qweight):
                raise EfflmError(f"compressed-tensors export: {name}'s int8 weights changed in compression")

    return _write(plain, "int-quantized", tokenizer, out, same_codes)


def _export_fp8(model: torch.nn.Module, tokenizer: Any, out: Path, fp8: dict) -> Path:
    from efflm.nn.fp_formats import FP8

    if set(efflm_modules(model)) != set(fp8):
        raise EfflmError("compressed-tensors export: one scheme per export (FP8 or a weight-only grid, not both)")
    kinds = {(m.weight_format, m.group_size == m.in_features, m.act_format) for m in fp8.values()}
    if len(kinds) != 1 or next(iter(kinds))[:2] != ("e4m3", True) or next(iter(kinds))[2] not in ("e4m3", None):
        raise EfflmError(
            "compressed-tensors export writes FP8 as E4M3 weights with one scale per output channel "
            "(zeroquant_fp weight_format e4m3, group_size -1; act_format e4m3 or none)"
        )
    plain = _plain(model, fp8, lambda m: m.dequantize(torch.float32))  # w / s rounds back to the same FP8
    dynamic = next(iter(kinds))[2] is not None
    _per_channel(plain, fp8, "float", dynamic, "float-quantized", lambda m: m.scales)

    def same_codes(compressed: torch.nn.Module) -> None:
        for name, m in fp8.items():
            stored = compressed.get_submodule(name).weight
            if not torch.equal(stored.view(torch.uint8), m.codes().view(torch.uint8)) or stored.dtype != FP8["e4m3"]:
                raise EfflmError(f"compressed-tensors export: {name}'s FP8 weights changed in compression")

    return _write(plain, "float-quantized", tokenizer, out, same_codes)


def _export_mxfp4(model: torch.nn.Module, tokenizer: Any, out: Path, fp4: dict) -> Path:
    """MXFP4 (the library's ``mxfp4-pack-quantized``, weights only): E2M1 codes in groups of 32
    sharing a power-of-two (E8M0) scale — efflm's FP4 grid with ``pow2_scales``."""
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme, apply_quantization_config
    from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES

    if set(efflm_modules(model)) != set(fp4):
        raise EfflmError("compressed-tensors export: one scheme per export (MXFP4 or another grid, not both)")
    for name, m in fp4.items():
        s = m.scales.float()
        pow2 = torch.equal(torch.exp2(torch.log2(s).round()), s)
        if m.group_size != 32 or m.act_format is not None or not pow2:
            raise EfflmError(
                f"compressed-tensors export: {name} is not MXFP4 (E2M1 weights, groups of 32, power-of-two "
                "scales, no activation rounding: zeroquant_fp weight_format e2m1, group_size 32, pow2_scales true, "
                "act_format none)"
            )
    plain = _plain(model, fp4, lambda m: m.dequantize(torch.float32))  # w / s is the E2M1 value itself
    scheme = QuantizationScheme(targets=sorted(fp4), **PRESET_SCHEMES["MXFP4A16"])
    config = QuantizationConfig(config_groups={"group_0": scheme}, format="mxfp4-pack-quantized")
    apply_quantization_config(plain, config, show_progress=False)
    for name, m in fp4.items():
        scale = plain.get_submodule(name).weight_scale
        scale.data = m.scales.to(scale.dtype).reshape(scale.shape)
    return _write(plain, "mxfp4-pack-quantized", tokenizer, out)
