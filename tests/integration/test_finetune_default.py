"""Fine-tuning on the default model: a short QLoRA run that peft reads back with the same logits."""

import pytest
import torch

pytestmark = pytest.mark.integration


def test_qlora_on_the_default_model_trains_saves_and_peft_agrees(tmp_path):
    peft = pytest.importorskip("peft")
    from efflm import trainer
    from efflm.finetune.adapter import merge
    from efflm.io.load import load
    from efflm.methods import config_from_dict, get

    p = tmp_path / "q.yaml"
    p.write_text(
        "method: qlora\nr: 4\ntarget_modules: [q_proj, v_proj]\ntrain:\n  steps: 3\n  batch: 1\n  seq_len: 64\n  lr: 0.001\n"
    )
    cfg, train_cfg = trainer.read_method_recipe(p)
    r = trainer.finetune("smollm2-135m", [], cfg, train_cfg, "domain", tmp_path / "a")
    assert r["steps"] == 3 and r["base_bytes"] < 0.4 * 538e6  # NF4 decoder Linears (embedding stays fp32)
    model, tok = trainer.load_model("smollm2-135m", [], tmp_path / "a")
    ids = tok("To be, or not to be", return_tensors="pt")["input_ids"]
    ours = model(ids).logits
    # peft's side: the same NF4 weights dequantized into plain Linears (no bitsandbytes on this CPU)
    base, _ = load("smollm2-135m")
    base = merge(
        get("qlora").apply(
            base, config_from_dict({"method": "qlora", "r": 4, "target_modules": ["q_proj", "v_proj"]}), None
        )
    )
    with torch.no_grad():
        theirs = peft.PeftModel.from_pretrained(base, str(tmp_path / "a")).eval()(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)  # fp32, 30 layers; observed ~1e-5
