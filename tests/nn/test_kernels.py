"""Packed CPU kernels agree with the dequantize path, and storage layouts round-trip."""

import pytest
import torch

from efflm.methods import config_from_dict, get
from efflm.nn import c_kernels, torch_kernels
from efflm.nn.quant_linear import QuantLinear
from efflm.quantize import grid

LAYOUT = {"q4": "q4blk", "int4": "int4pack"}


@pytest.fixture(params=["q4", "int4"])
def int4_kernel(request, monkeypatch):
    """Each 4-bit kernel in turn: efflm's own (where it builds) and torch's."""
    if request.param == "q4" and not c_kernels.available():
        pytest.skip("efflm's AVX2 kernel is not available on this machine")
    if request.param == "int4":
        monkeypatch.setattr(c_kernels, "available", lambda: False)
    return request.param


def _ql(bits, group_size, symmetric, dtype, n=96, k=128, seed=0):
    lin = torch.nn.Linear(k, n, bias=True)
    torch.manual_seed(seed)
    torch.nn.init.normal_(lin.weight, std=0.05)
    ql = grid.to_quant_linear(lin, bits, group_size, symmetric)
    ql.set_compute_dtype(dtype)
    return ql


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [32, 64])
def test_int4_kernel_matches_dequantized_forward(bits, symmetric, group_size, int4_kernel):
    ql = _ql(bits, group_size, symmetric, torch.bfloat16)
    x = torch.randn(5, 128, dtype=torch.bfloat16)
    assert ql.layout.name == LAYOUT[int4_kernel] and ql.kernel(x) == int4_kernel
    ref = torch.nn.functional.linear(x.float(), ql.dequantize(torch.float32), ql.bias.float())
    torch.testing.assert_close(ql(x).float(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("kernel", ["q8", "int8"])
def test_int8_kernel_matches_dequantized_forward(kernel, monkeypatch):
    if kernel == "q8" and not c_kernels.available():
        pytest.skip("efflm's AVX2 kernel is not available on this machine")
    if kernel == "int8":
        monkeypatch.setattr(c_kernels, "available", lambda: False)
    ql = _ql(8, -1, True, torch.bfloat16)
    x = torch.randn(4, 7, 128, dtype=torch.bfloat16)
    assert ql.layout.name == "i8" and ql.kernel(x) == kernel
    assert ql.kernel(x.float()) is None and _ql(8, 32, True, torch.bfloat16).kernel(x) is None
    ref = torch.nn.functional.linear(x.float(), ql.dequantize(torch.float32), ql.bias.float())
    torch.testing.assert_close(ql(x).float(), ref, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("bits,k", [(2, 128), (3, 128), (3, 70), (4, 128), (8, 128)])
def test_stored_codes_take_exactly_their_bits(bits, k, tmp_path):
    """2- and 3-bit codes are stored bit-packed (not in nibbles): the file and the fp32 module hold
    ceil(k / 8) · bits bytes a row, and read back the same codes."""
    lin = torch.nn.Linear(k, 96, bias=False)
    ql = grid.to_quant_linear(lin, bits, -1, True)
    assert ql.qweight.numel() * ql.qweight.element_size() == 96 * -(-k // 8) * 8 * bits // 8
    torch.save(ql.state_dict(), tmp_path / "q.pt")
    again = QuantLinear.from_spec(ql.spec())
    again.load_state_dict(torch.load(tmp_path / "q.pt"))
    assert torch.equal(again.codes(), ql.codes()) and again.codes().max() <= 2**bits - 1
    assert ql.codes().float().std() > 0  # real codes, not all one value


def test_int4pack_inverse_is_exact():
    q = torch.randint(0, 16, (192, 576), dtype=torch.uint8)
    assert torch.equal(torch_kernels.int4pack_to_codes(torch_kernels.int4pack(q), 192, 576), q)


@pytest.mark.parametrize("bits,group_size,symmetric", [(4, 64, True), (3, 32, False), (8, -1, True), (6, 32, False)])
def test_layouts_share_one_file_format(bits, group_size, symmetric, int4_kernel):
    fp32, bf16 = _ql(bits, group_size, symmetric, torch.float32), _ql(bits, group_size, symmetric, torch.bfloat16)
    a, b = fp32.state_dict(), bf16.state_dict()
    assert set(a) == set(b) and torch.equal(a["qweight"], b["qweight"]) and torch.equal(fp32.codes(), bf16.codes())
    shell = QuantLinear.from_spec(bf16.spec())
    shell.load_state_dict(b)
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    assert torch.equal(shell(x), bf16(x))


def test_packed_model_saves_and_reloads_bit_exactly(tmp_path, tiny, tiny_ids, int4_kernel):
    from efflm.io.load import load
    from efflm.io.save import save

    model, tok = tiny
    model = get("rtn").apply(model, config_from_dict({"method": "rtn", "bits": 4, "group_size": 32}), None)
    model = get("dense").apply(model, config_from_dict({"method": "dense", "dtype": "bfloat16"}), None)
    q = model.model.layers[0].self_attn.q_proj
    assert q.layout.name == LAYOUT[int4_kernel]
    again, _ = load(str(save(model, tok, tmp_path / "m")))
    assert again.model.layers[0].self_attn.q_proj.layout.name == LAYOUT[int4_kernel]
    assert torch.equal(again(tiny_ids).logits, model(tiny_ids).logits)


def test_q4_blocks_round_trip_and_match_a_float_matmul():
    if not c_kernels.available():
        pytest.skip("efflm's AVX2 kernel is not available on this machine")
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (64, 256), dtype=torch.uint8, generator=g)
    assert torch.equal(c_kernels.from_blocks(c_kernels.to_blocks(codes), 256), codes)
    s = (torch.rand(64, 4, generator=g) * 0.02 + 0.001).half()
    o = (torch.randn(64, 4, generator=g) * 0.05).half()
    w = (codes.float() - 8).reshape(64, 4, 64) * s.float()[..., None] + (o.float() + 8 * s.float())[..., None]
    x = torch.randn(3, 256, generator=g)
    ref = x @ w.reshape(64, 256).t()
    y = c_kernels.q4_mm(x, c_kernels.to_blocks(codes), s, o, 8.0, 64)
    assert (y - ref).norm() / ref.norm() < 0.01  # int8 activations per 32: ~0.5% here


@pytest.mark.parametrize(
    "n,k,m",
    [(576, 576, 1), (192, 576, 5), (1536, 576, 8), (576, 1536, 3), (49152, 576, 2), (33, 96, 7), (7, 32, 13)],
)
@pytest.mark.parametrize("bits", [4, 8])
def test_kernels_on_the_default_models_shapes_and_odd_tails(n, k, m, bits):
    """Up to four activation rows share each unpacked weight block: any number of rows (tails of
    the 4-row tiles included) gives each row exactly what it gets alone, close to the float matmul."""
    if not c_kernels.available():
        pytest.skip("efflm's AVX2 kernel is not available on this machine")
    g = torch.Generator().manual_seed(n + k + m)
    x = torch.randn(m, k, generator=g)
    if bits == 4:
        codes = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=g)
        s = (torch.rand(n, k // 32, generator=g) * 0.02 + 0.001).half()
        w = (codes.float() - 8).reshape(n, k // 32, 32) * s.float()[..., None]
        blocks = c_kernels.to_blocks(codes)

        def mm(a):
            return c_kernels.q4_mm(a, blocks, s, None, 8.0, 32)
    else:
        codes = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
        s = (torch.rand(n, 1, generator=g) * 0.02 + 0.001).half()
        w = codes.float() * s.float()

        def mm(a):
            return c_kernels.q8_mm(a, codes, s)

    y = mm(x)
    ref = x @ w.reshape(n, k).t()
    assert (y - ref).norm() / ref.norm() < 0.01
    assert torch.equal(y, torch.cat([mm(x[i : i + 1]) for i in range(m)]))


@pytest.mark.skipif(not c_kernels._cpu_ok(), reason="no AVX2/FMA/F16C here")
def test_a_kernel_source_that_does_not_compile_is_said_not_hidden(tmp_path, monkeypatch):
    bad = tmp_path / "bad.c"
    bad.write_text("int efflm_broken(void) { return undeclared_name; }\n")
    monkeypatch.setenv("EFFLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(c_kernels, "SOURCES", [*c_kernels.SOURCES, bad])
    c_kernels.library.cache_clear()
    try:
        with pytest.warns(UserWarning, match="the C kernels did not build"):
            assert c_kernels.library() is None
    finally:
        monkeypatch.undo()
        c_kernels.library.cache_clear()
        c_kernels.library()  # the real library again, for the tests after this one


@pytest.mark.parametrize("k,group,offsets", [(576, 32, False), (1536, 32, True), (96, 32, False), (576, 64, True)])
def test_the_vnni_kernel_gives_the_avx2_kernels_bits(k, group, offsets):
    """The 4-bit kernel chosen by CPU feature: AVX-512 VNNI where the CPU has it, same results as
    the AVX2 kernel bit for bit (odd block counts, asymmetric grids, 1..4-row tiles)."""
    lib = c_kernels.library()
    if lib is None:
        pytest.skip("efflm's C kernels are not available on this machine")
    if not lib.efflm_use_vnni(1):
        pytest.skip("no AVX-512 VNNI here: the AVX2 kernel is the only one")
    g = torch.Generator().manual_seed(k)
    n, m = 40, 7
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=g)
    s = (torch.rand(n, k // group, generator=g) * 0.02 + 0.001).half()
    o = (torch.randn(n, k // group, generator=g) * 0.05).half() if offsets else None
    x = torch.randn(m, k, generator=g)
    blocks = c_kernels.to_blocks(codes)
    try:
        assert c_kernels.isa() == "avx512vnni"
        vnni = c_kernels.q4_mm(x, blocks, s, o, 8.0, group)
        lib.efflm_use_vnni(0)
        avx2 = c_kernels.q4_mm(x, blocks, s, o, 8.0, group)
    finally:
        lib.efflm_use_vnni(1)
    assert torch.equal(vnni, avx2)


def test_efflm_isa_avx2_keeps_the_avx2_kernel(monkeypatch):
    if not c_kernels.available():
        pytest.skip("efflm's C kernels are not available on this machine")
    monkeypatch.setenv("EFFLM_ISA", "avx2")
    assert c_kernels.isa() == "avx2"
    monkeypatch.delenv("EFFLM_ISA")
    c_kernels.isa()  # back to the choice by CPU feature
