import torch

from efflm.eval.metrics import bytes_read_per_token, model_bytes
from efflm.methods import config_from_dict, get
from efflm.nn.quant_embedding import QuantEmbedding
from efflm.nn.quant_linear import QuantLinear


def _apply(model):
    return get("int8_embeddings").apply(model, config_from_dict({"method": "int8_embeddings"}))


def test_tied_matrix_stays_shared_and_shrinks(tiny, tiny_ids):
    model, _ = tiny
    assert model.config.tie_word_embeddings
    ref = model(tiny_ids).logits
    before = model_bytes(model)
    vocab, hidden = model.config.vocab_size, model.config.hidden_size
    model = _apply(model)
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert isinstance(emb, QuantEmbedding) and isinstance(head, QuantLinear) and head.bits == 8
    assert emb.qweight.data_ptr() == head.qweight.data_ptr()  # stored once
    assert before - model_bytes(model) == vocab * hidden * 4 - (vocab * hidden + vocab * 2)
    assert bytes_read_per_token(model) == model_bytes(model)
    rel = (model(tiny_ids).logits - ref).norm() / ref.norm()
    assert rel < 0.02, rel


def test_rows_are_the_lm_head_rows(tiny):
    model, _ = tiny
    w = model.get_input_embeddings().weight.data.clone()
    model = _apply(model)
    ids = torch.tensor([[0, 5, 258]])
    torch.testing.assert_close(model.get_input_embeddings()(ids)[0], model.get_output_embeddings().dequantize()[ids[0]])
    assert (model.get_input_embeddings()(ids)[0] - w[ids[0]]).abs().max() <= w.abs().max() / 127


def test_untied_embeddings_get_their_own_codes(tiny, tiny_ids):
    model, _ = tiny
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.data.clone())
    model = _apply(model)
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert emb.tied_to is None and emb.qweight.data_ptr() != head.qweight.data_ptr()
    assert torch.isfinite(model(tiny_ids).logits).all()


def test_bf16_head_runs_the_int8_kernel(tiny, tiny_ids):
    from efflm.nn import c_kernels

    model, _ = tiny
    model = get("dense").apply(_apply(model), config_from_dict({"method": "dense", "dtype": "bfloat16"}))
    head = model.get_output_embeddings()
    want = "q8" if c_kernels.available() else "int8"  # efflm's AVX2 kernel where it builds, else torch's
    assert head.kernel(torch.zeros(1, model.config.hidden_size, dtype=torch.bfloat16)) == want
    assert model(tiny_ids).logits.dtype == torch.bfloat16
