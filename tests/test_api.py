"""The Python API of the README: compress, evaluate, generate, save."""

import pytest
import torch

import efflm
from efflm.api import as_recipe
from efflm.core.errors import EfflmError
from efflm.methods import config_from_dict

W4 = {"method": "rtn", "bits": 4, "group_size": 32}


def test_recipe_forms_are_equivalent(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("- method: rtn\n  bits: 4\n  group_size: 32\n")
    want = [config_from_dict(W4)]
    assert as_recipe(str(path)) == as_recipe(path) == as_recipe(W4) == as_recipe([W4]) == want
    assert as_recipe("- method: rtn\n  bits: 4\n  group_size: 32\n") == as_recipe(want) == want
    assert as_recipe(None) == []
    with pytest.raises(EfflmError, match="did you mean .rtn."):
        as_recipe({"method": "rnt"})


def test_compress_evaluate_generate_save_round_trip(tmp_path):
    model, tok = efflm.compress("tiny-llama", W4)
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "QuantLinear"
    dense, _ = efflm.compress("tiny-llama")
    r, d = efflm.evaluate(model, tok, seq_len=64, windows=2), efflm.evaluate(dense, tok, seq_len=64, windows=2)
    assert r["eval_tokens"] == 126 and r["bytes"] < 0.5 * d["bytes"] and r["ppl"] != d["ppl"]
    text = efflm.generate(model, tok, "Once upon a time", max_new_tokens=6)
    ids = tok("Once upon a time", add_special_tokens=False, return_tensors="pt")["input_ids"]
    greedy = model.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1] :]
    assert text == tok.decode(greedy, skip_special_tokens=True)  # the same greedy tokens as transformers
    out = efflm.save(model, tok, tmp_path / "m", W4)
    back, _ = efflm.compress(str(out))
    assert torch.equal(back(ids).logits, model(ids).logits)
    with pytest.raises(EfflmError, match="output exists"):
        efflm.save(model, tok, out)
