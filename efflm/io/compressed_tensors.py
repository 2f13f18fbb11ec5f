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

ZeroQuant's grids with token-wise activations (``ActQuantLinear``) are the same weight groups with
dynamic per-token int activations of its ``act_bits`` (``int-quantized`` at 8-bit symmetric
weights — vLLM's int8 scheme with ``group_size: -1`` — else ``pack-quantized``).

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

A model whose modules differ — W8A8 attention beside W4A16 MLPs, several bit widths or group
sizes — is written with one config group per scheme, each with its own format (the library's
``mixed-precision``); modules left dense are in no group.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from efflm.core.atomic import atomic_dir
from efflm.core.errors import EfflmError
from efflm.models.arch import file_name, layout_for, set_module
from efflm.nn.fp_formats import fp4_kind_of_config, fp4_kind_of_module, global_e4m3_scale
from efflm.nn.module_registry import efflm_modules, role
from efflm.nn.superblocks import zero_points

EXPORT_DTYPE = torch.float16  # fp16 holds efflm's fp16 scales exactly (bf16 would not)
WRITTEN = (
    "weight-only W2..W8 grids (rtn, gptq, awq; asymmetric with scales: int_zero_point), the same with per-token "
    "activations (zeroquant), W8A8 int8 (w8a8, smoothquant), FP8 E4M3 per channel, MXFP4 and NVFP4 (zeroquant_fp)"
)


@dataclass(frozen=True)
class Scheme:
    """One config group: the library's format and its weight (and activation) arguments."""

    format: str
    weights: tuple  # QuantizationArgs fields as sorted (name, value) pairs
    acts: tuple | None = None

    def build(self, targets: list[str]) -> Any:
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

        acts = None if self.acts is None else QuantizationArgs(**dict(self.acts))
        return QuantizationScheme(
            targets=targets, weights=QuantizationArgs(**dict(self.weights)), input_activations=acts, format=self.format
        )


def _args(**kw) -> tuple:
    return tuple(sorted(kw.items()))


def scheme_of(name: str, m: torch.nn.Module) -> Scheme:
    """The compressed-tensors scheme that holds module ``m`` exactly, or a one-line refusal."""
    kind = role(m)
    if kind in ("weight_grid", "weight_act_grid"):
        if not m.symmetric and zero_points(m.scales, m.offsets, m.bits) is None:
            raise EfflmError(
                f"compressed-tensors export: {name}'s asymmetric grid has float offsets with no integer zero "
                "point; quantize with scales: int_zero_point (or symmetric: true)"
            )
        channel = m.group_size == m.in_features
        strategy = {"strategy": "channel"} if channel else {"strategy": "group", "group_size": m.group_size}
        weights = _args(num_bits=m.bits, type="int", symmetric=m.symmetric, **strategy)
        if kind == "weight_grid":
            return Scheme("pack-quantized", weights)
        acts = _args(num_bits=m.act_bits, type="int", symmetric=True, strategy="token", dynamic=True)
        int8 = m.bits == 8 and m.symmetric  # vLLM's int8 W8A8 kernels read int-quantized
        return Scheme("int-quantized" if int8 else "pack-quantized", weights, acts)
    if kind == "w8a8":
        if m.outlier_threshold:
            raise EfflmError(
                f"compressed-tensors export: {name}: LLM.int8()'s float outlier columns have no compressed-tensors "
                "scheme"
            )
        token = _args(num_bits=8, type="int", symmetric=True, strategy="token", dynamic=True)
        return Scheme("int-quantized", _args(num_bits=8, type="int", symmetric=True, strategy="channel"), token)
    if kind == "fp_grid":
        channel = m.group_size == m.in_features
        if m.weight_format == "e4m3" and channel and m.act_format in ("e4m3", None):
            acts = _args(num_bits=8, type="float", symmetric=True, strategy="token", dynamic=True)
            weights = _args(num_bits=8, type="float", symmetric=True, strategy="channel")
            return Scheme("float-quantized", weights, acts if m.act_format else None)
        kind4 = fp4_kind_of_module(m)
        if kind4 == "mxfp4":
            weights = _args(num_bits=4, type="float", symmetric=True, strategy="group", group_size=32,
                            scale_dtype=torch.uint8, zp_dtype=torch.uint8)  # fmt: skip
            return Scheme("mxfp4-pack-quantized", weights)
        if kind4 == "nvfp4":
            weights = _args(num_bits=4, type="float", symmetric=True, strategy="tensor_group", group_size=16,
                            scale_dtype=torch.float8_e4m3fn, zp_dtype=torch.float8_e4m3fn)  # fmt: skip
            return Scheme("nvfp4-pack-quantized", weights)
        raise EfflmError(
            f"compressed-tensors export: {name} is neither FP8 (E4M3 weights, one scale per output channel: "
            "zeroquant_fp weight_format e4m3, group_size -1; act_format e4m3 or none) nor MXFP4 (E2M1 weights, "
            "groups of 32, power-of-two scales, no activation rounding: zeroquant_fp weight_format e2m1, "
            "group_size 32, pow2_scales true, act_format none) nor NVFP4 (the same with group_size 16, "
            "e4m3_scales true)"
        )
    raise EfflmError(f"compressed-tensors export: {name} ({type(m).__name__}) has no scheme; written: {WRITTEN}")


def _fp8_ok(cfg) -> bool:
    return cfg.weight_format == "e4m3" and cfg.group_size == -1


def check_recipe(recipe: list) -> None:
    """Refuse, before any work, a recipe this exporter cannot write."""
    for cfg in recipe:
        if hasattr(cfg, "symmetric") and not cfg.symmetric and getattr(cfg, "scales", "free") == "free":
            raise EfflmError(
                f"compressed-tensors export: {cfg.label()} has float (min/max) offsets; compressed-tensors "
                "stores integer zero points: use scales: int_zero_point (or symmetric: true)"
            )
        if cfg.method == "zeroquant_fp" and not (_fp8_ok(cfg) or fp4_kind_of_config(cfg)):
            raise EfflmError(
                f"compressed-tensors export: {cfg.label()}: FP8 is written as E4M3 weights with one scale per "
                "output channel (weight_format e4m3, group_size -1), MXFP4 as E2M1 weights in groups of 32 with "
                "power-of-two scales and no activation rounding (weight_format e2m1, group_size 32, pow2_scales "
                "true, act_format none), NVFP4 the same in groups of 16 with E4M3 scales (group_size 16, "
                "e4m3_scales true)"
            )
        if cfg.method in ("llm_int8", "int8_embeddings"):
            raise EfflmError(f"compressed-tensors export: {cfg.method} has no compressed-tensors scheme; {WRITTEN}")


def _weight(m: torch.nn.Module) -> torch.Tensor:
    """The float weight the library re-quantizes into exactly ``m``'s codes."""
    if role(m) == "w8a8":
        return m.qweight.float() * m.wscale.to(EXPORT_DTYPE).float()[:, None]
    return m.dequantize(torch.float32)


def _set_params(name: str, linear: torch.nn.Module, m: torch.nn.Module) -> None:
    """Put ``m``'s own scales (and zero points) into the library's parameters; for an integer grid,
    check that the library's rounding gives back ``m``'s codes."""
    scale = linear.weight_scale
    own = m.wscale if role(m) == "w8a8" else m.scales
    if hasattr(linear, "weight_global_scale"):  # NVFP4: E4M3 scales ÷ one power of two per tensor
        g = global_e4m3_scale(m.scales)
        linear.weight_global_scale.data = g.reshape(linear.weight_global_scale.shape).to(linear.weight_global_scale)
        own = m.scales.float() * g
    scale.data = own.to(scale.dtype).reshape(scale.shape)
    if role(m) not in ("weight_grid", "weight_act_grid"):
        return
    half = 2 ** (m.bits - 1)  # the library's codes are signed: ours − 2^(b−1), zero points too
    z = None if m.symmetric else zero_points(m.scales, m.offsets, m.bits)
    if z is not None:
        zp = linear.weight_zero_point
        zp.data = (z - half).to(zp.dtype).reshape(zp.shape)
    per_input = scale.float().repeat_interleave(m.group_size, dim=1)[:, : m.in_features]
    want = m.codes().float() - (half if z is None else z.float().repeat_interleave(m.group_size, dim=1))
    if not torch.equal((linear.weight.float() / per_input).round(), want):
        raise EfflmError(f"compressed-tensors export: {name} is not on its own grid")


def _same_codes(modules: dict):
    """After compression: int8 and FP8 weights stored are ``m``'s codes byte for byte."""

    def check(compressed: torch.nn.Module) -> None:
        for name, m in modules.items():
            if role(m) == "w8a8":
                same = torch.equal(compressed.get_submodule(name).weight, m.qweight)
            elif role(m) == "weight_act_grid" and m.bits == 8 and m.symmetric:  # int8 weights, signed
                same = torch.equal(
                    compressed.get_submodule(name).weight, (m.codes().to(torch.int16) - 128).to(torch.int8)
                )
            elif role(m) == "fp_grid" and m.weight_format == "e4m3":
                stored = compressed.get_submodule(name).weight
                same = stored.dtype == torch.float8_e4m3fn and torch.equal(stored.view(torch.uint8), m.codes())
            else:
                continue
            if not same:
                raise EfflmError(f"compressed-tensors export: {name}'s 8-bit weights changed in compression")

    return check


def export(model: torch.nn.Module, tokenizer: Any, out: str | Path) -> Path:
    """Write ``model`` (with quantized modules) to ``out`` as a compressed-tensors checkpoint."""
    try:
        from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config
    except ImportError as e:
        raise EfflmError(
            "compressed-tensors export needs the compressed-tensors package (pip install 'efflm[interop]')"
        ) from e
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise EfflmError(f"output exists: {out} (choose another --out)")
    modules = {n: m for n, m in efflm_modules(model).items() if role(m) != "experts"}
    if not modules:
        raise EfflmError("compressed-tensors export needs a quantized model (no quantized module found)")
    groups: dict[Scheme, list[str]] = {}
    for name, m in modules.items():
        groups.setdefault(scheme_of(name, m), []).append(name)
    plain = _plain(model, modules, _weight)
    ordered = sorted(groups.items(), key=lambda kv: (kv[0].format, kv[0].weights, sorted(kv[1])))
    config = QuantizationConfig(
        config_groups={f"group_{i}": s.build(sorted(names)) for i, (s, names) in enumerate(ordered)},
        format=ordered[0][0].format if len(ordered) == 1 else "mixed-precision",
    )
    apply_quantization_config(plain, config, show_progress=False)
    for name, m in modules.items():
        _set_params(name, plain.get_submodule(name), m)
    return _write(plain, tokenizer, out, _same_codes(modules))


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


def _write(plain: torch.nn.Module, tokenizer: Any, out: Path, check=None) -> Path:
    from compressed_tensors.compressors import ModelCompressor

    compressor = ModelCompressor.from_pretrained_model(plain)  # each group's own format
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
