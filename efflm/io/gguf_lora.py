"""A LoRA adapter (efflm's or peft's directory) as a llama.cpp LoRA GGUF file (``--lora``).

The file llama.cpp's ``convert_lora_to_gguf.py`` writes: ``general.type = adapter``,
``adapter.type = lora``, ``adapter.lora.alpha``, and for every adapted Linear its base tensor's
GGUF name with ``.lora_a`` (A, ``[r, in]``) and ``.lora_b`` (B, ``[out, r]``) appended, in F32.
llama.cpp adds ``scale · (alpha / r) · B A x`` to the Linear's output, which is peft's LoRA.
Where the architecture's rotary layout permutes q/k rows in GGUF (Llama), B's rows are permuted
the same way (A's inputs are untouched). Only plain LoRA on decoder Linears is written: DoRA's
magnitudes, IA3's scalings and adapters on the embedding or head have no llama.cpp LoRA form.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from efflm.core.atomic import atomic_write_bytes_from
from efflm.core.errors import EfflmError
from efflm.models.arch import layout_for


def _adapter(path: Path) -> tuple[float, dict[str, torch.Tensor]]:
    """The scale llama.cpp's ``adapter.lora.alpha`` must hold and the tensors of a peft-format LoRA
    directory (efflm's adapters are written in it too)."""
    import json

    from safetensors.torch import load_file

    cfg_file, weights = path / "adapter_config.json", path / "adapter_model.safetensors"
    if not cfg_file.is_file() or not weights.is_file():
        raise EfflmError(f"{path}: not an adapter directory (needs adapter_config.json and adapter_model.safetensors)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except ValueError:
        raise EfflmError(f"{cfg_file}: not valid JSON") from None
    kind = "dora" if cfg.get("use_dora") else str(cfg.get("peft_type", "?")).lower()
    if kind != "lora":
        raise EfflmError(f"GGUF LoRA export writes plain LoRA adapters, not {kind!r}")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise EfflmError("GGUF LoRA export: per-module rank/alpha patterns have no llama.cpp form")
    r, alpha = int(cfg["r"]), float(cfg.get("lora_alpha", 8))
    # llama.cpp scales by alpha / r; rsLoRA's alpha / sqrt(r) is that with alpha · sqrt(r)
    return (alpha * r**0.5 if cfg.get("use_rslora") else alpha), load_file(str(weights))


def check(adapter: str | Path, hf_config: Any, out: str | Path) -> None:
    """Refuse, before any work, an adapter, model or output this writer cannot take."""
    from efflm.io.gguf_export import check_model

    out = Path(out)
    if out.suffix != ".gguf":
        raise EfflmError(f"GGUF LoRA export: --out must end in .gguf, got {out.name}")
    if out.exists() or out.is_symlink():
        raise EfflmError(f"output exists: {out} (choose another --out)")
    check_model(hf_config)
    list(_tensors(*_adapter(Path(adapter)), hf_config))


def _tensors(alpha: float, state: dict[str, torch.Tensor], hf_config: Any):
    from efflm.io.gguf_export import rope_permute, tensor_names

    names, permuted_heads = tensor_names(hf_config)
    prefix = "base_model.model."
    pairs = sorted(k[len(prefix) : -len(".lora_A.weight")] for k in state if k.endswith(".lora_A.weight"))
    if not pairs or len(pairs) * 2 != len(state):
        raise EfflmError("GGUF LoRA export: the adapter holds tensors other than lora_A/lora_B pairs")
    for owner in pairs:
        gname = names.get_name(f"{owner}.weight", try_suffixes=(".weight",))
        if gname is None or not gname.startswith("blk."):
            raise EfflmError(f"GGUF LoRA export: {owner} is not a decoder Linear llama.cpp can adapt")
        a = state[f"{prefix}{owner}.lora_A.weight"].float()
        b = state[f"{prefix}{owner}.lora_B.weight"].float()
        n = permuted_heads(owner)
        if n is not None:
            b = rope_permute(b, n)
        yield f"{gname}.lora_a", a.contiguous().numpy()
        yield f"{gname}.lora_b", b.contiguous().numpy()


def export(adapter: str | Path, hf_config: Any, out: str | Path) -> Path:
    """Write the LoRA adapter directory ``adapter`` (for a base with config ``hf_config``) to ``out``."""
    import gguf

    check(adapter, hf_config, out)
    alpha, state = _adapter(Path(adapter))
    tensors = list(_tensors(alpha, state, hf_config))

    def write(path: Path) -> None:
        writer = gguf.GGUFWriter(path, layout_for(hf_config.model_type).gguf_arch)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        for name, data in tensors:
            writer.add_tensor(name, data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    atomic_write_bytes_from(Path(out), write, replace=False)
    return Path(out)
