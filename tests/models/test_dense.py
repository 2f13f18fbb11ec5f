"""The dense baseline: every weight cast to one float type, derived buffers left as computed."""

import pytest
import torch

from efflm.core.errors import ConfigError
from efflm.models import dense


def test_dense_casts_every_weight_and_keeps_derived_buffers(tiny, tiny_ids):
    model, _ = tiny
    inv_freq = model.model.rotary_emb.inv_freq.clone()
    ref = model(tiny_ids).logits
    out = dense.apply(model, dense.DenseConfig(dtype="bfloat16"))
    assert {p.dtype for p in out.parameters()} == {torch.bfloat16} and out.config.dtype == torch.bfloat16
    assert torch.equal(out.model.rotary_emb.inv_freq, inv_freq)  # fp32, as transformers' loaders leave it
    logits = out(tiny_ids).logits.float()
    assert (logits - ref).abs().max() < 0.05 * ref.abs().max()  # the same model, rounded to bf16


def test_dense_refuses_a_type_that_is_not_a_float():
    with pytest.raises(ConfigError, match="dense: dtype must be one of float32, bfloat16, float16, got 'int8'"):
        dense.DenseConfig(dtype="int8")
