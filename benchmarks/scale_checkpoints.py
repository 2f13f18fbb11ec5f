"""Random-weight Hugging Face checkpoints at real models' shapes, for benchmarks at scale.

    python benchmarks/scale_checkpoints.py [--models tinyllama-1.1b,llama-3.2-3b,llama-3.1-8b] [--out DIR]
                                           [--threads 2]

Writes one directory per model under ``--out`` (default ``<efflm cache>/scale/``, i.e.
``~/.cache/efflm/scale/`` unless ``EFFLM_CACHE`` is set): ``config.json`` (``LlamaConfig``,
bfloat16), ``generation_config.json``, SmolLM2's tokenizer files, and the weights in bf16 as
sharded safetensors (``model-0000k-of-0000n.safetensors``, at most 2 GB each, whole decoder
layers kept together) with ``model.safetensors.index.json`` in the standard Hugging Face format
(``metadata.total_size`` and ``weight_map``). Tensor names are those of transformers'
``LlamaForCausalLM`` state dict.

The shapes are the real models' (``config.json`` on the Hub) except the vocabulary: every model
uses SmolLM2's tokenizer, so ``vocab_size`` is 49152 (the embedding and head are smaller than
the real ones). Weights are N(0, 0.02) from a ``torch.Generator`` seeded by the tensor's name
(the same files on every run and thread count), norms are ones: the models produce noise,
at the real cost in memory, bandwidth and compute.

Peak memory is about one shard: a shard's tensors are generated (decoder layer by decoder layer),
written with ``safetensors.torch.save_file`` and freed before the next shard. Each directory is
filled under a temporary name and renamed when complete; the ``.complete`` marker (written
last, with the parameter count and bytes) lets a later run skip it.

Other scripts import ``SHAPES`` and ``write_checkpoint`` (``sys.path`` holds ``benchmarks/``
when a script under it runs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from efflm.core.atomic import atomic_dir
from efflm.core.errors import EfflmError
from efflm.core.paths import cache_dir

VOCAB = 49152  # SmolLM2's tokenizer, shared by every shape
TOKENIZER = "smollm2-135m"  # efflm's default model: its converted directory holds the tokenizer files
SHARD_BYTES = 2_000_000_000  # transformers' max_shard_size "2GB"
DTYPE = torch.bfloat16
STD = 0.02
COMPLETE = ".complete"
INDEX = "model.safetensors.index.json"

# LlamaConfig kwargs. Llama 3.x's real max_position_embeddings is 131072 (with llama3 rope scaling,
# factor 32 for 3.2-3B and 8 for 3.1-8B, original 8192); here it is 8192 and the rope is plain
# (theta 500000), so that efflm's context-sized buffers (a KV cache sized to the model's context)
# stay small. Neither changes a weight's shape.
SHAPES: dict[str, dict] = {
    "tinyllama-1.1b": dict(
        vocab_size=VOCAB, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
        num_attention_heads=32, num_key_value_heads=4, rope_theta=10000.0,
        max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=False,
    ),
    "llama-3.2-3b": dict(
        vocab_size=VOCAB, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
        num_attention_heads=24, num_key_value_heads=8, head_dim=128, rope_theta=500000.0,
        max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True,
    ),
    "llama-3.1-8b": dict(
        vocab_size=VOCAB, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0,
        max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=False,
    ),
}  # fmt: skip


def tensor_plan(shape: dict) -> list[list[tuple[str, tuple[int, ...]]]]:
    """``LlamaForCausalLM``'s state dict as (name, shape) in its order, grouped in units kept in one
    shard where they fit: the embedding, each decoder layer, the final norm, the head."""
    h, inter, vocab = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    heads = shape["num_attention_heads"]
    kv = shape.get("num_key_value_heads") or heads
    hd = shape.get("head_dim") or h // heads
    units = [[("model.embed_tokens.weight", (vocab, h))]]
    for i in range(shape["num_hidden_layers"]):
        p = f"model.layers.{i}."
        units.append([
            (p + "self_attn.q_proj.weight", (heads * hd, h)),
            (p + "self_attn.k_proj.weight", (kv * hd, h)),
            (p + "self_attn.v_proj.weight", (kv * hd, h)),
            (p + "self_attn.o_proj.weight", (h, heads * hd)),
            (p + "mlp.gate_proj.weight", (inter, h)),
            (p + "mlp.up_proj.weight", (inter, h)),
            (p + "mlp.down_proj.weight", (h, inter)),
            (p + "input_layernorm.weight", (h,)),
            (p + "post_attention_layernorm.weight", (h,)),
        ])  # fmt: skip
    units.append([("model.norm.weight", (h,))])
    if not shape.get("tie_word_embeddings", False):
        units.append([("lm_head.weight", (vocab, h))])
    return units


def _nbytes(shp: tuple[int, ...]) -> int:
    n = DTYPE.itemsize
    for d in shp:
        n *= d
    return n


def shard_plan(shape: dict, shard_bytes: int = SHARD_BYTES) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Tensors packed in order into shards of at most ``shard_bytes`` (a lone larger tensor gets
    its own shard); a unit (a decoder layer) starts a new shard rather than straddle two."""
    shards: list[list] = [[]]
    used = 0
    for unit in tensor_plan(shape):
        if shards[-1] and used + sum(_nbytes(s) for _, s in unit) > shard_bytes:
            shards.append([])
            used = 0
        for name, shp in unit:
            if shards[-1] and used + _nbytes(shp) > shard_bytes:
                shards.append([])
                used = 0
            shards[-1].append((name, shp))
            used += _nbytes(shp)
    return shards


def n_parameters(shape: dict) -> int:
    return sum(_nbytes(s) for unit in tensor_plan(shape) for _, s in unit) // DTYPE.itemsize


def make_tensor(name: str, shp: tuple[int, ...]) -> torch.Tensor:
    """Norms are ones; every other weight is N(0, STD) in bf16 from a generator seeded by ``name``."""
    if name.endswith("norm.weight"):
        return torch.ones(shp, dtype=DTYPE)
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") & (2**63 - 1)
    return torch.empty(shp, dtype=DTYPE).normal_(0.0, STD, generator=torch.Generator().manual_seed(seed))


def _shard_name(k: int, n: int) -> str:
    return f"model-{k:05d}-of-{n:05d}.safetensors"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write_checkpoint(
    name: str,
    out_dir: Path | str | None = None,
    *,
    shape: dict | None = None,
    shard_bytes: int = SHARD_BYTES,
    threads: int = 2,
    tokenizer: str = TOKENIZER,
) -> Path:
    """Write the checkpoint ``name`` (``SHAPES[name]``, or the LlamaConfig kwargs ``shape``) to
    ``out_dir/name`` and return that directory; a complete one already there is kept as it is."""
    from safetensors.torch import save_file
    from transformers import GenerationConfig, LlamaConfig

    from efflm.models.sources import load_tokenizer, model_config

    shape = dict(SHAPES[name] if shape is None else shape)
    out = Path(out_dir if out_dir is not None else cache_dir() / "scale") / name
    if (out / COMPLETE).is_file():
        return out
    if out.exists():
        raise EfflmError(f"{out} exists but is not a complete checkpoint (no {COMPLETE}); remove it and rerun")
    shards = shard_plan(shape, shard_bytes)
    total_size = sum(_nbytes(s) for shard in shards for _, s in shard)
    out.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out.parent).free
    if free < total_size * 1.02 + (64 << 20):
        raise EfflmError(f"{name} needs {total_size / 1e9:.1f} GB; {out.parent} has {free / 1e9:.1f} GB free")
    t0 = time.perf_counter()
    with atomic_dir(out) as tmp:
        load_tokenizer(tokenizer).save_pretrained(tmp)
        ids = model_config(tokenizer)  # the special-token ids of the tokenizer's own model (1, 2, 2 for SmolLM2)
        cfg = LlamaConfig(
            **shape,
            bos_token_id=ids.bos_token_id,
            eos_token_id=ids.eos_token_id,
            pad_token_id=ids.pad_token_id,
            architectures=["LlamaForCausalLM"],
            dtype="bfloat16",
        )
        raw = cfg.to_diff_dict()  # what save_pretrained writes
        raw["dtype"] = raw["torch_dtype"] = "bfloat16"  # the key transformers ≥ 4.56 reads, and the older one
        (tmp / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
        GenerationConfig.from_model_config(cfg).save_pretrained(tmp)

        weight_map = {}
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for k, shard in enumerate(shards, 1):
                fname = _shard_name(k, len(shards))
                t = time.perf_counter()
                names = [n for n, _ in shard]
                tensors = dict(zip(names, pool.map(lambda ns: make_tensor(*ns), shard)))
                save_file(tensors, tmp / fname, metadata={"format": "pt"})
                del tensors
                weight_map.update(dict.fromkeys(names, fname))
                _log(f"  {name}: {fname} ({len(names)} tensors, {(tmp / fname).stat().st_size / 1e9:.2f} GB, "
                     f"{time.perf_counter() - t:.1f} s)")  # fmt: skip
        params = total_size // DTYPE.itemsize
        index = {
            "metadata": {"total_size": total_size, "total_parameters": params},
            "weight_map": dict(sorted(weight_map.items())),
        }
        (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        on_disk = sum(f.stat().st_size for f in tmp.iterdir() if f.is_file())
        marker = {"name": name, "parameters": params, "bytes": on_disk, "total_size": total_size,
                  "shards": len(shards), "seconds": round(time.perf_counter() - t0, 1), "shape": shape}  # fmt: skip
        (tmp / COMPLETE).write_text(json.dumps(marker, indent=2) + "\n")  # last: the directory is whole
    return out


def summary(path: Path) -> dict:
    """The ``.complete`` marker of a written checkpoint (parameters, bytes, seconds, shape)."""
    return json.loads((Path(path) / COMPLETE).read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/scale_checkpoints.py")
    p.add_argument("--models", default=",".join(SHAPES), help=f"comma-separated, of: {', '.join(SHAPES)}")
    p.add_argument("--out", default=None, help="parent directory (default: <efflm cache>/scale)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    names = [m.strip() for m in a.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in SHAPES]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(SHAPES)}")
    for name in names:
        path = write_checkpoint(name, a.out, threads=a.threads)
        s = summary(path)
        print(f"{path}\t{s['parameters']:,} parameters\t{s['bytes']:,} bytes ({s['bytes'] / 1e9:.2f} GB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
