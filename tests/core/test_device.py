"""``--device``'s resolution (``efflm.core.device``): what each value names on this machine, and the
one-line errors for a device that is not there."""

import pytest
import torch

from efflm.core import device
from efflm.core.errors import EfflmError

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors of a machine without CUDA")


def test_cpu_and_auto_resolve_to_the_cpu_here():
    assert device.resolve("cpu") == torch.device("cpu")
    assert device.resolve(" CPU ") == torch.device("cpu")
    want = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert device.resolve("auto") == device.resolve(None) == device.resolve("") == want


@no_gpu
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_a_gpu_that_is_not_there_is_a_one_line_error(spec):
    with pytest.raises(EfflmError, match="no CUDA GPU here") as e:
        device.resolve(spec)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "tpu", "cpu:0", "mps"])
def test_an_unknown_name_is_a_one_line_error(spec):
    with pytest.raises(EfflmError, match="unknown device") as e:
        device.resolve(spec)
    assert "\n" not in str(e.value)


def test_of_move_and_name():
    lin = torch.nn.Linear(2, 3)
    assert device.of(lin) == torch.device("cpu") and device.of(torch.nn.Module()) == torch.device("cpu")
    assert device.of(lin.to("meta")) == torch.device("meta")
    t = torch.ones(2)
    moved = device.move({"a": t, "b": [t, (t, 3)], "c": "x"}, "meta")
    assert moved["a"].device.type == "meta" and moved["b"][1][0].device.type == "meta"
    assert moved["b"][1][1] == 3 and moved["c"] == "x"
    assert device.move(t, "cpu") is t  # already there: no copy
    assert device.name("cpu") == "cpu"
    assert device.peak_memory_mb("cpu") is None and not device.is_cuda("cpu")
    device.synchronize("cpu")  # a no-op on the CPU
