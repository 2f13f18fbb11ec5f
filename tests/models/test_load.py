import json

import pytest
import torch

from efflm.core.errors import EfflmError
from efflm.io.load import load
from efflm.io.save import load_compressed, save
from efflm.methods import config_from_dict, get
from efflm.models import sources as loader


def test_tiny_llama_is_seeded_and_llama_shaped():
    (a, tok), (b, _) = load("tiny-llama"), load("tiny-llama")
    assert a.config.model_type == "llama" and a.config.num_key_value_heads < a.config.num_attention_heads
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert tok.decode(tok("Hello, world", add_special_tokens=False)["input_ids"]) == "Hello, world"


def test_missing_path():
    with pytest.raises(EfflmError, match="model not found"):
        load("/nonexistent/model")


def test_file_that_is_not_a_model(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    with pytest.raises(EfflmError, match="not a model"):
        load(str(f))
    with pytest.raises(EfflmError, match="no config.json"):
        load(str(tmp_path))


def test_unsupported_architecture_names_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bloom"}))
    with pytest.raises(
        EfflmError,
        match="unsupported architecture 'bloom'; supported: gemma2, gemma3_text, gpt2, llama, mistral, mixtral, opt, phi3, qwen2, qwen2_moe, qwen3, qwen3_moe",
    ):
        load(str(tmp_path))


def test_truncated_safetensors(tmp_path, tiny):
    model, tok = tiny
    out = save(model, tok, tmp_path / "m")
    weights = out / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(EfflmError, match="truncated safetensors"):
        load(str(out))


def test_truncated_and_fake_gguf(tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"NOPE" + bytes(100))
    with pytest.raises(EfflmError, match="not a GGUF file"):
        load(str(fake))
    real = loader.smollm2_gguf().read_bytes()[:3_000_000]
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(real)
    with pytest.raises(EfflmError, match="truncated or damaged"):
        load(str(cut))


def test_plain_model_saves_as_ordinary_hf_dir(tmp_path, tiny, tiny_ids):
    from transformers import AutoModelForCausalLM

    model, tok = tiny
    out = save(model, tok, tmp_path / "plain")
    again = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(again(tiny_ids).logits, model(tiny_ids).logits)


def test_compressed_model_round_trips_bit_exactly(tmp_path, tiny, tiny_ids):
    model, tok = tiny
    model = get("rtn").apply(model, config_from_dict({"method": "rtn", "bits": 3, "group_size": 32}), None)
    out = save(model, tok, tmp_path / "q", recipe_yaml="- method: rtn\n")
    again, _ = load(str(out))
    assert torch.equal(again(tiny_ids).logits, model(tiny_ids).logits)
    assert {n for n, _ in again.named_buffers() if n.endswith("qweight")}
    with pytest.raises(EfflmError, match="output exists"):
        save(model, tok, out)


def test_save_is_atomic_when_writing_fails(tmp_path, tiny, monkeypatch):
    import efflm.io.save as saver

    model, tok = tiny

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(saver, "_write", boom)
    with pytest.raises(RuntimeError):
        save(model, tok, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_load_compressed_rejects_mismatched_weights(tmp_path, tiny):
    model, tok = tiny
    model = get("rtn").apply(model, config_from_dict({"method": "rtn"}), None)
    out = save(model, tok, tmp_path / "q")
    meta = json.loads((out / "efflm.json").read_text())
    meta["modules"].popitem()
    (out / "efflm.json").write_text(json.dumps(meta))
    with pytest.raises(EfflmError, match="do not match"):
        load_compressed(out)
