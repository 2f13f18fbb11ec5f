"""benchmarks/scale_checkpoints.py writes a checkpoint transformers loads whole: a tiny shape
(2 layers, hidden 64, SmolLM2's vocabulary) split over several shards."""

import importlib.util
import json
from pathlib import Path

import torch
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[2] / "benchmarks"
TINY = dict(
    vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
)  # fmt: skip


def script():
    spec = importlib.util.spec_from_file_location("bench_scale_checkpoints", ROOT / "scale_checkpoints.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tiny_shape_loads_with_every_tensor_and_a_consistent_index(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    sc = script()
    path = sc.write_checkpoint("tiny-test", tmp_path, shape=TINY, shard_bytes=4_000_000, threads=1)
    assert path == tmp_path / "tiny-test" and (path / sc.COMPLETE).is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-test"]  # the temporary directory is gone

    index = json.loads((path / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in path.glob("*.safetensors"))
    assert len(shards) == 3 and set(index["weight_map"].values()) == set(shards)
    assert all(s == f"model-{k:05d}-of-00003.safetensors" for k, s in enumerate(shards, 1))
    stored, total = {}, 0
    for s in shards:
        with safe_open(path / s, "pt") as f:
            assert f.metadata() == {"format": "pt"}
            for k in f.keys():
                t = f.get_tensor(k)
                assert t.dtype == torch.bfloat16 and index["weight_map"][k] == s
                stored[k], total = t, total + t.numel() * t.element_size()
    assert set(stored) == set(index["weight_map"])
    assert index["metadata"]["total_size"] == total == 2 * sc.n_parameters(TINY)

    cfg = AutoConfig.from_pretrained(path)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size, cfg.dtype) == (64, 2, 49152, torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(path)
    state = model.state_dict()
    assert set(state) == set(stored)  # nothing missing, nothing unexpected
    assert all(torch.equal(state[k], v) for k, v in stored.items())  # the files' values, not fresh init
    assert torch.equal(stored["model.norm.weight"], torch.ones(64, dtype=torch.bfloat16))
    assert abs(stored["model.layers.1.mlp.up_proj.weight"].float().std().item() - 0.02) < 2e-3

    again = sc.write_checkpoint("tiny-test", tmp_path / "again", shape=TINY, shard_bytes=4_000_000, threads=2)
    with safe_open(again / shards[1], "pt") as f:  # seeded by name: the same values, whatever the threads
        assert all(torch.equal(f.get_tensor(k), stored[k]) for k in f.keys())
    mtime = (path / sc.COMPLETE).stat().st_mtime_ns
    assert sc.write_checkpoint("tiny-test", tmp_path, shape=TINY) == path  # complete: skipped
    assert (path / sc.COMPLETE).stat().st_mtime_ns == mtime
