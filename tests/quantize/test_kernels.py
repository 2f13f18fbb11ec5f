"""Packed CPU kernels agree with the dequantize path, and storage layouts round-trip."""
import pytest
import torch

from efflm.core.registry import config_from_dict, get
from efflm.quantize import kernels, rtn
from efflm.quantize.linear import QuantLinear


def _ql(bits, group_size, symmetric, dtype, n=96, k=128, seed=0):
    lin = torch.nn.Linear(k, n, bias=True)
    torch.manual_seed(seed)
    torch.nn.init.normal_(lin.weight, std=0.05)
    ql = rtn.to_quant_linear(lin, bits, group_size, symmetric)
    ql.set_compute_dtype(dtype)
    return ql


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_kernel_matches_dequantized_forward(bits, symmetric):
    ql = _ql(bits, 32, symmetric, torch.bfloat16)
    x = torch.randn(5, 128, dtype=torch.bfloat16)
    assert ql.layout == "int4pack" and ql.kernel(x) == "int4"
    ref = torch.nn.functional.linear(x.float(), ql.dequantize(torch.float32), ql.bias.float())
    torch.testing.assert_close(ql(x).float(), ref, rtol=2e-2, atol=2e-2)


def test_int8_kernel_matches_dequantized_forward():
    ql = _ql(8, -1, True, torch.bfloat16)
    x = torch.randn(4, 7, 128, dtype=torch.bfloat16)
    assert ql.layout == "i8" and ql.kernel(x) == "int8"
    assert ql.kernel(x.float()) is None and _ql(8, 32, True, torch.bfloat16).kernel(x) is None
    ref = torch.nn.functional.linear(x.float(), ql.dequantize(torch.float32), ql.bias.float())
    torch.testing.assert_close(ql(x).float(), ref, rtol=3e-2, atol=3e-2)


def test_int4pack_inverse_is_exact():
    q = torch.randint(0, 16, (192, 576), dtype=torch.uint8)
    assert torch.equal(kernels.int4pack_to_codes(kernels.int4pack(q), 192, 576), q)


@pytest.mark.parametrize("bits,group_size,symmetric", [(4, 64, True), (3, 32, False), (8, -1, True), (6, 32, False)])
def test_layouts_share_one_file_format(bits, group_size, symmetric):
    fp32, bf16 = _ql(bits, group_size, symmetric, torch.float32), _ql(bits, group_size, symmetric, torch.bfloat16)
    a, b = fp32.state_dict(), bf16.state_dict()
    assert set(a) == set(b) and torch.equal(a["qweight"], b["qweight"]) and torch.equal(fp32.codes(), bf16.codes())
    shell = QuantLinear.from_spec(bf16.spec())
    shell.load_state_dict(b)
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    assert torch.equal(shell(x), bf16(x))


def test_packed_model_saves_and_reloads_bit_exactly(tmp_path, tiny, tiny_ids):
    from efflm.models.load import load
    from efflm.models.save import save

    model, tok = tiny
    model = get("rtn").apply(model, config_from_dict({"method": "rtn", "bits": 4, "group_size": 32}), None)
    model = get("dense").apply(model, config_from_dict({"method": "dense", "dtype": "bfloat16"}), None)
    q = model.model.layers[0].self_attn.q_proj
    assert q.layout == "int4pack"
    again, _ = load(str(save(model, tok, tmp_path / "m")))
    assert again.model.layers[0].self_attn.q_proj.layout == "int4pack"
    assert torch.equal(again(tiny_ids).logits, model(tiny_ids).logits)
