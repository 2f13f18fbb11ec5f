import pytest
import torch

from efflm.core.errors import ConfigError
from efflm.methods import config_from_dict, get
from efflm.nn.codes import pack_bits, unpack_bits
from efflm.nn.lut_linear import LUTLinear
from efflm.quantize import grid
from efflm.quantize.squeezellm import assign, sparse_mask, squeeze, weighted_kmeans_rows


def layer():
    """Heavy-tailed weights; inputs whose channels differ in energy (so sensitivity matters)."""
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():  # StudentT draws from the global generator: seed it, whatever ran before
        torch.manual_seed(0)
        w = torch.distributions.StudentT(3.0).sample((256, 512)) * 0.02
    energy = torch.rand(512, generator=g) ** 4 * 10
    x = torch.randn(256, 512, generator=g) * energy.sqrt()
    fisher = (x * x).sum(0).expand(256, 512).clone()  # the output error's diagonal sensitivity
    return w, x, fisher


def out_err(v, w, x):
    return ((x @ (v - w).t()).norm() / (x @ w.t()).norm()).item()


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_pack_bits_round_trips(bits):
    q = torch.randint(0, 2**bits, (7, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(bits))
    packed = pack_bits(q, bits)
    assert packed.shape == (7, 64 * bits // 8)
    assert torch.equal(unpack_bits(packed, bits, 64), q)


def test_kmeans_is_lloyd_converged_and_beats_a_uniform_grid():
    w, _, _ = layer()
    c = weighted_kmeans_rows(w, torch.ones_like(w), 8, iters=200)
    a = assign(w, c)
    for j in range(8):  # every centroid is the mean of its members (a fixed point of Lloyd)
        members = a == j
        means = (w * members).sum(1) / members.sum(1).clamp(min=1)
        has = members.any(1)
        torch.testing.assert_close(c[has, j], means[has], rtol=1e-4, atol=1e-6)
    mse = ((c.gather(1, a) - w) ** 2).mean()
    assert mse < 0.3 * ((grid.fake_quantize(w, 3, -1, False) - w) ** 2).mean()  # per-row uniform, same table size


@pytest.mark.parametrize("bits", [3, 4])
def test_squeezellm_beats_rtn_output_error_at_the_same_bits(bits):
    w, x, fisher = layer()
    dense_only = LUTLinear.from_parts(*squeeze(w, fisher, bits, 0.0, 0.0, 50), bits)
    full = LUTLinear.from_parts(*squeeze(w, fisher, bits, 0.004, 0.0005, 50), bits)
    unweighted = LUTLinear.from_parts(*squeeze(w, torch.ones_like(w), bits, 0.0, 0.0, 50), bits)
    rtn, rtn_bits = grid.fake_quantize(w, bits, 64, symmetric=False), bits + 32 / 64  # fp16 scale + offset per 64
    assert dense_only.bits_per_weight() <= rtn_bits  # 2^bits fp16 per row of 512 inputs: at most 16 bits per 64
    assert out_err(dense_only.dequantize(), w, x) < out_err(rtn, w, x)
    assert out_err(dense_only.dequantize(), w, x) < 0.9 * out_err(unweighted.dequantize(), w, x)  # sensitivity helps
    assert out_err(full.dequantize(), w, x) < 0.95 * out_err(dense_only.dequantize(), w, x)  # sparse outliers help


def test_sparse_weights_are_reproduced_and_counted():
    w, _, fisher = layer()
    keep = sparse_mask(w, fisher, 0.004, 0.0005)
    assert abs(keep.sum().item() - 0.0045 * w.numel()) <= 0.0005 * w.numel()  # the two sets may overlap
    m = LUTLinear.from_parts(*squeeze(w, fisher, 3, 0.004, 0.0005, 50), 3)
    torch.testing.assert_close(m.dequantize()[keep], w[keep], rtol=2e-3, atol=1e-5)
    assert m.nnz <= keep.sum()
    stored = sum(b.numel() * b.element_size() for b in m.buffers())
    assert stored == 256 * 512 * 3 // 8 + 256 * 8 * 2 + 257 * 4 + m.nnz * 4  # codes, tables, CSR
    assert m.bits_per_weight() == 8 * stored / w.numel()


def test_lut_linear_forward_is_the_dequantized_matmul_and_reloads_exactly():
    w, x, fisher = layer()
    bias = torch.randn(256)
    m = LUTLinear.from_parts(*squeeze(w, fisher, 3, 0.004, 0.0005, 20), 3, bias=bias)
    torch.testing.assert_close(m(x), x @ m.dequantize().t() + bias)
    back = LUTLinear.from_spec(m.spec())
    back.load_state_dict(m.state_dict())
    assert torch.equal(back(x), m(x))


def test_squeezellm_on_tiny_llama_uses_calibration_fisher(tiny, tiny_ids):
    model, _ = tiny
    calib = torch.randint(3, 259, (4, 32), generator=torch.Generator().manual_seed(0))
    ref = model(tiny_ids).logits
    out = get("squeezellm").apply(model, config_from_dict({"method": "squeezellm", "bits": 4}), calib)
    lin = out.model.layers[0].mlp.down_proj
    assert isinstance(lin, LUTLinear) and lin.bits == 4 and lin.nnz > 0
    assert ((out(tiny_ids).logits - ref).norm() / ref.norm()) < 0.2


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"bits": 1}, "bits"),
        ({"bits": 9}, "bits"),
        ({"outliers": 1.0}, "outliers"),
        ({"sensitive": -0.1}, "sensitive"),
        ({"outliers": 0.6, "sensitive": 0.5}, "below 1"),
        ({"iters": 0}, "iters"),
    ],
)
def test_bad_config(bad, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict({"method": "squeezellm", **bad})


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("rows", [1, 3, 6])
@pytest.mark.parametrize("sparse", [False, True])
def test_lookup_table_kernel_equals_the_dequantized_matmul(bits, rows, sparse):
    from efflm.nn import c_kernels

    if not c_kernels.available():
        pytest.skip("efflm's C kernels do not build here")
    w, x, fisher = layer()
    frac = 0.004 if sparse else 0.0
    m = LUTLinear.from_parts(*squeeze(w, fisher, bits, frac, frac / 8, 10), bits, bias=torch.randn(256))
    assert (m.nnz > 0) == sparse
    xs = x[:rows].reshape(rows, 1, 512)
    assert m.kernel(xs) == "lut" and m.kernel(x) is None  # 256 rows: dequantize + GEMM
    torch.testing.assert_close(m(xs), xs @ m.dequantize().t() + m.bias, rtol=1e-5, atol=1e-4)
    m.set_compute_dtype(torch.bfloat16)
    assert m(xs.bfloat16()).dtype == torch.bfloat16
