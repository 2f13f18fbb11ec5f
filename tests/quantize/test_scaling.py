"""Folding a per-channel scale into the op that produces a Linear's input keeps the function."""

import pytest
import torch

from efflm.quantize.scaling import fold_offset, fold_scales


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gemma3"])
def test_a_scale_folded_into_the_norm_keeps_norm_then_linear(spec):
    from efflm.io.load import load
    from efflm.models.arch import layout_for

    model, _ = load(spec)
    layout = layout_for(model.config.model_type)
    layer = model.model.layers[0]
    norm, q = layer.get_submodule(layout.norms[0]), layer.get_submodule(layout.attn_linears[0])
    x = torch.randn(3, 5, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        norm.weight.normal_(0, 0.3)  # a trained norm's weight, not its initial zeros or ones
        ref = q(norm(x))
        s = torch.rand(model.config.hidden_size, generator=torch.Generator().manual_seed(1)) + 0.5
        fold_scales(norm, s, fold_offset(layout, layout.norms[0]))
        q.weight.mul_(s)
        torch.testing.assert_close(q(norm(x)), ref, rtol=1e-5, atol=1e-5)
    assert fold_offset(layout, layout.attn_linears[2]) == 0.0  # a Linear source has no offset
