"""The decode path on a model that is not on the CPU (a GPU; torch's ``meta`` device here): its KV
cache and positions are made where the model is, and the fused C step (CPU memory only) is off."""

import torch

from efflm.eval.metrics import decode_path
from efflm.inference.engine import Engine


def test_the_cache_goes_where_the_model_is_and_the_c_step_stays_off(tiny):
    model, _ = tiny
    assert Engine(model).device.type == "cpu"
    model.to("meta")
    engine = Engine(model)
    assert engine.device.type == "meta" and engine.fast is None and "on meta" in engine.fast_off
    cache = engine.start(2, 8)
    assert {t.device.type for t in (*cache.tensors(), cache.valid, engine.pos)} == {"meta"}
    assert decode_path(model).startswith("torch (the model is on meta")
    with engine.here():
        assert torch.arange(3).device.type == "meta"
    assert torch.arange(3).device.type == "cpu"  # nothing left behind
