"""Integration tests on the real default model, SmolLM2-135M-Instruct, loaded offline."""

import math

import pytest
from smol_helpers import ppl_after as _ppl_after

from efflm.datasets import text

pytestmark = pytest.mark.integration


def test_loads_offline_as_plain_llama(smol):
    model, tok, _ = smol
    assert type(model).__name__ == "LlamaForCausalLM"
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads) == (576, 30, 9, 3)
    assert c.tie_word_embeddings and not hasattr(c, "quantization_config")
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 136e6


def test_greedy_generation_is_coherent_english(smol):
    model, tok, _ = smol
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(ids, max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_perplexity_is_finite_and_sane(ppl):
    dense, _ = ppl
    assert math.isfinite(dense) and 15 < dense < 120, dense


def test_rtn_8bit_within_1_percent_of_dense(ppl):
    dense, rtn = ppl
    assert abs(rtn[8] / dense - 1) < 0.01, (dense, rtn[8])


def test_perplexity_orders_rtn_3_above_4_above_8(ppl):
    _, rtn = ppl
    assert rtn[3] > rtn[4] > rtn[8], rtn


def test_asymmetric_g32_4bit_is_lossless_on_the_q4_1_default(smol, ppl):
    # The documented trap: the default's weights already lie on this grid.
    dense, _ = ppl
    _, _, ids = smol
    assert _ppl_after([{"method": "rtn", "bits": 4, "group_size": 32, "symmetric": False}], ids) == pytest.approx(
        dense, rel=1e-4
    )


def test_evaluation_and_development_text_are_never_in_calibration_windows(smol):
    _, tok, ids = smol
    eval_text = text.split_text("eval")
    dev = text.dev_tokens(tok)
    dev_text = tok.decode(dev.tolist())
    # positive controls: a window of each split decodes back into that split's text
    assert tok.decode(ids[1000:1128].tolist()) in eval_text
    assert tok.decode(dev[1000:1128].tolist()) in dev_text
    for w in text.calibration_windows(tok, 64, 128, seed=0):
        piece = tok.decode(w.tolist())
        assert piece not in eval_text and piece not in dev_text


@pytest.mark.parametrize("show", ["0", "1"])
def test_the_first_gguf_conversion_draws_efflms_bar_or_nothing(tmp_path, show):
    """A fresh cache converts the default GGUF once; its progress follows EFFLM_PROGRESS (so a
    one-line error after it stays one line in logs and tests)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "EFFLM_CACHE": str(tmp_path), "EFFLM_PROGRESS": show}
    code = "from efflm.models.sources import model_config; model_config('smollm2-135m')"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert ("converting the GGUF once" in r.stderr) == (show == "1")
    assert "Converting and de-quantizing" not in r.stderr
    if show == "0":
        assert r.stderr == ""
