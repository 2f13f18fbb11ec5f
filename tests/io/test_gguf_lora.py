"""LoRA adapters as llama.cpp LoRA GGUF files (efflm.io.gguf_lora) and merged models as GGUF: llama.cpp
with ``--lora`` computes what efflm computes with the adapter unmerged."""

import numpy as np
import pytest
import torch

from efflm.cli import main
from efflm.core.errors import EfflmError
from efflm.io import gguf_export, gguf_lora
from efflm.models.sources import model_config
from tests.io.test_gguf_llama_cpp import hf_dir

pytestmark = pytest.mark.engines
llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make test`")


def peft_adapter(base: str, out, dora: bool = False, seed: int = 0):
    """A peft LoRA adapter on every decoder Linear of ``base`` with random (nonzero) A and B."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, use_dora=dora))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)  # an update about the size of the weights
    peft_model.save_pretrained(out)
    return out


def _logits(path, ids, **kw):
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=2, **kw)
    llm.eval(ids)
    return torch.tensor(np.array(llm.scores[: len(ids)]))


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-qwen3"])
def test_llama_cpp_with_the_lora_file_computes_efflms_unmerged_adapter(spec, tmp_path):
    from efflm import trainer

    base = str(hf_dir(spec, tmp_path / "hf"))
    adapter = peft_adapter(base, tmp_path / "lora")
    lora_file = gguf_lora.export(adapter, model_config(base), tmp_path / "lora.gguf")
    model, tok = trainer.load_model(base, [], str(adapter))
    plain, _ = trainer.load_model(base, [], None)
    base_file = gguf_export.export(plain, None, tmp_path / "base.gguf", tok)
    ids = tok("The adapter changes every layer's output, a little.")["input_ids"]
    with torch.no_grad():
        ours, bare = model(torch.tensor([ids])).logits[0], plain(torch.tensor([ids])).logits[0]
    theirs = _logits(base_file, ids, lora_path=str(lora_file))
    cos = torch.nn.functional.cosine_similarity(ours, theirs, dim=-1)
    assert cos.min() > 0.999, cos
    # the adapter matters: without it llama.cpp is further from efflm's adapted logits
    assert (theirs - ours).abs().max() < 0.5 * (bare - ours).abs().max()
    merged = tmp_path / "merged.gguf"
    assert main(["merge", "--model", base, "--adapter", str(adapter), "--out", str(merged)]) == 0
    cos = torch.nn.functional.cosine_similarity(ours, _logits(merged, ids), dim=-1)
    assert cos.min() > 0.999, cos


def test_export_lora_cli_and_its_refusals(tmp_path, capsys):
    base = str(hf_dir("tiny-llama", tmp_path / "hf"))
    adapter = peft_adapter(base, tmp_path / "lora")
    out = tmp_path / "a.gguf"
    assert main(["export-lora", "--model", base, "--adapter", str(adapter), "--out", str(out)]) == 0
    import gguf

    fields = {k: f.contents() for k, f in gguf.GGUFReader(out).fields.items()}
    assert (fields["general.type"], fields["adapter.type"], fields["adapter.lora.alpha"]) == ("adapter", "lora", 8.0)
    dora = peft_adapter(base, tmp_path / "dora", dora=True)
    capsys.readouterr()
    for args, pattern in [
        (["--adapter", str(dora), "--out", str(tmp_path / "d.gguf")], "plain LoRA"),
        (["--adapter", str(adapter), "--out", str(tmp_path / "a.bin")], "must end in .gguf"),
        (["--adapter", str(adapter), "--out", str(out)], "output exists"),
        (["--adapter", str(tmp_path), "--out", str(tmp_path / "e.gguf")], "not an adapter directory"),
    ]:
        assert main(["export-lora", "--model", base, *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("efflm: error:") and pattern in err[0], err
    assert sorted(p.name for p in tmp_path.glob("*.gguf")) == ["a.gguf"]
    with pytest.raises(EfflmError, match="5 of every 6"):  # tiny-gemma3 alternates; llama.cpp's Gemma 3 does not
        gguf_lora.check(adapter, model_config("tiny-gemma3"), tmp_path / "g.gguf")
