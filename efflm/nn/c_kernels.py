"""efflm's own CPU kernels, built with the system C compiler on first use: the 4-bit and 8-bit
matmuls (``q4_cpu.c``) and the fused decode step (``decode_cpu.c``, driven by
``efflm.inference.fast_decode``), sharing the block arithmetic of ``q4_blocks.h``; and the
GPTQ/SparseGPT column sweep (``sweep_cpu.c``, driven by ``efflm.calib.sweep``); and the
lookup-table matmul of SqueezeLLM's codes (``lut_cpu.c``, ``lut_mm`` below).

The C files are compiled once per machine into one library in efflm's cache dir (``gcc -O3
-mavx2 -mfma -mf16c -fopenmp -ffp-contract=off``, about two seconds) and loaded with ctypes
after torch, so their OpenMP loops run on torch's own thread pool. Where there is no compiler, no x86 AVX2/FMA/F16C, or
``EFFLM_Q4_KERNEL=0``, ``available()`` is False and ``QuantLinear`` keeps torch's kernels.

Block layout (``to_blocks``): per output row, 16 bytes per 32 inputs, stored in pairs of blocks:
byte j of a pair holds code j of the first block (low nibble) and code j of the second (high
nibble); an odd last block is in llama.cpp's Q4_0 order. Files keep the portable nibble layout. Activations are
quantized to int8 per 32 inputs inside the kernel (llama.cpp's Q8_0 scheme), which is the
difference from a bf16 matmul: a relative error of about 0.4% per block's dot product.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import warnings
from functools import lru_cache
from pathlib import Path

import torch

from efflm.core import settings
from efflm.core.paths import cache_dir

HERE = Path(__file__).parent / "csrc"  # the C sources
SOURCES = [HERE / "q4_cpu.c", HERE / "decode_cpu.c", HERE / "sweep_cpu.c", HERE / "lut_cpu.c"]  # one library
HEADERS = [HERE / "q4_blocks.h", HERE / "q4_avx512.h"]
MAX_IN = 32 * 512  # in_features the q4 kernel takes (q4_blocks.h: MAXB blocks per row)
_LIB: list = [None]  # the loaded library, for the hot path (no lookup per call)
# no FMA contraction: each multiply and add rounds as torch's elementwise ops do (decode_cpu.c)
FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-ffp-contract=off", "-shared", "-fPIC"]


def _cpu_ok() -> bool:
    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return all(f" {f}" in flags for f in ("avx2", "fma", "f16c"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _build(cc: str, out: Path) -> None:
    """Compile into a unique temporary, record its sha256 beside it, then rename both into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    try:
        subprocess.run([cc, *FLAGS, *map(str, SOURCES), "-o", str(tmp), "-lm"], check=True, capture_output=True)
        out.with_suffix(".sha256").write_text(_sha256(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The compiled kernel, or None where it cannot run here (no source in this install, no
    compiler, no AVX2/FMA/F16C, or ``EFFLM_Q4_KERNEL=0``): callers then keep torch's kernels.

    The cached library is trusted only if its sha256 matches the one recorded when efflm
    built it; otherwise it is rebuilt."""
    if not settings.q4_kernel() or not _cpu_ok():
        return None
    cc = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if cc is None:
        return None
    try:
        src = b"".join(p.read_bytes() for p in SOURCES + HEADERS)
        tag = hashlib.sha256(src + " ".join(FLAGS).encode()).hexdigest()[:16]
        out = cache_dir() / "kernels" / f"q4_cpu-{tag}.so"
        recorded = out.with_suffix(".sha256")
        if not (out.is_file() and recorded.is_file() and recorded.read_text().strip() == _sha256(out)):
            _build(cc, out)
        lib = ctypes.CDLL(str(out))
    except subprocess.CalledProcessError as e:  # a compiler that rejects the source is worth saying
        first = (e.stderr or b"").decode(errors="replace").strip().splitlines()[:1]
        warnings.warn(f"efflm: the C kernels did not build ({first[0] if first else e}); using torch's", stacklevel=2)
        return None
    except OSError:
        return None
    p, i, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    lib.efflm_q4_gemm.argtypes = [p, i, i, i, p, p, p, f, i, i, p]
    lib.efflm_q4_gemm.restype = None
    lib.efflm_q8_gemm.argtypes = [p, i, i, i, p, p, i, p]
    lib.efflm_q8_gemm.restype = None
    lib.efflm_decode_layers.argtypes = [p, p]
    lib.efflm_decode_layers.restype = None
    lib.efflm_obs_sweep.argtypes = [p, i, i, i, i, p, p, p, p, i, p, p]
    lib.efflm_obs_sweep.restype = None
    lib.efflm_lut_gemm.argtypes = [p, i, i, p, i, p, p, p, p, i, p]
    lib.efflm_lut_gemm.restype = None
    lib.efflm_use_vnni.argtypes = [i]
    lib.efflm_use_vnni.restype = i
    lib.efflm_use_vnni(int(settings.isa() != "avx2"))
    _LIB[0] = lib
    return lib


def isa() -> str | None:
    """The 4-bit kernel chosen at load: ``avx512vnni`` where the CPU has AVX-512 VNNI (and
    ``EFFLM_ISA`` is not ``avx2``), else ``avx2``; None without the C kernels."""
    lib = library()
    if lib is None:
        return None
    return "avx512vnni" if lib.efflm_use_vnni(int(settings.isa() != "avx2")) else "avx2"


def available() -> bool:
    return library() is not None


def takes(x: torch.Tensor) -> bool:
    """Whether a packed CPU kernel can take ``x``: efflm's C kernels (and torch's int4/int8 CPU
    kernels) read CPU memory only, so a module whose tensors are on a GPU runs its torch path."""
    return x.device.type == "cpu"


def to_blocks(codes: torch.Tensor) -> torch.Tensor:
    """uint8 nibble codes [N, K] (0..15, centred on 8) -> [N, K/2] in the kernel's order: per pair of
    32-input blocks, 32 bytes whose low nibbles are the first block's codes and high nibbles the
    second's (one 32-byte load and two masks unpack both); an odd last block keeps llama.cpp's
    Q4_0 order (code j low, code j + 16 high)."""
    n, k = codes.shape
    c = codes.to(torch.uint8)
    nb = k // 32
    pairs = nb // 2 * 2
    out = []
    if pairs:
        p = c[:, : pairs * 32].reshape(n, pairs // 2, 2, 32)
        out.append((p[:, :, 0] | (p[:, :, 1] << 4)).reshape(n, pairs * 16))
    if nb % 2:
        last = c[:, pairs * 32 :].reshape(n, 2, 16)
        out.append(last[:, 0] | (last[:, 1] << 4))
    return torch.cat(out, dim=1).contiguous()


def from_blocks(blocks: torch.Tensor, k: int) -> torch.Tensor:
    n, nb = blocks.shape[0], k // 32
    pairs = nb // 2 * 2
    out = []
    if pairs:
        b = blocks[:, : pairs * 16].reshape(n, pairs // 2, 1, 32)
        out.append(torch.cat([b & 0x0F, b >> 4], dim=2).reshape(n, pairs * 32))
    if nb % 2:
        last = blocks[:, pairs * 16 :].reshape(n, 1, 16)
        out.append(torch.cat([last & 0x0F, last >> 4], dim=1).reshape(n, 32))
    return torch.cat(out, dim=1)


def _io(x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    if x.dtype not in (torch.float32, torch.bfloat16):
        x = x.float()
    x = x.contiguous()
    return x, torch.empty(*x.shape[:-1], n, dtype=x.dtype), int(x.dtype == torch.bfloat16)


def q4_mm(
    x: torch.Tensor,
    blocks: torch.Tensor,
    scales: torch.Tensor,
    offsets: torch.Tensor | None,
    half: float,
    group_size: int,
) -> torch.Tensor:
    """``x [..., K]`` (fp32 or bf16) times the 4-bit weight ``[N, K]``; the result in x's dtype.

    ``scales``/``offsets``: contiguous fp16 ``[N, K / group_size]``; offsets (asymmetric
    grids) add ``offset + half·scale`` per group, i.e. w = (c − 8)·s + o + half·s."""
    k, n = x.shape[-1], blocks.shape[0]
    x, y, bf16 = _io(x, n)
    _LIB[0].efflm_q4_gemm(
        x.data_ptr(),
        bf16,
        x.numel() // k,
        k,
        blocks.data_ptr(),
        scales.data_ptr(),
        offsets.data_ptr() if offsets is not None else None,
        half,
        n,
        group_size,
        y.data_ptr(),
    )
    return y


def q8_mm(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``x [..., K]`` times int8 ``weight [N, K]`` with one contiguous fp16 scale per row (K % 32 == 0)."""
    k, n = x.shape[-1], weight.shape[0]
    x, y, bf16 = _io(x, n)
    _LIB[0].efflm_q8_gemm(x.data_ptr(), bf16, x.numel() // k, k, weight.data_ptr(), scales.data_ptr(), n, y.data_ptr())
    return y


def lut_mm(x: torch.Tensor, m) -> torch.Tensor:
    """``x [..., K]`` times a ``LUTLinear``'s weight (codes of 2..4 bits, its table and sparse part)."""
    k, n = x.shape[-1], m.out_features
    xf = x.float().contiguous()
    y = torch.empty(*x.shape[:-1], n, dtype=torch.float32)
    sparse = m.nnz > 0
    _LIB[0].efflm_lut_gemm(
        xf.data_ptr(),
        xf.numel() // k,
        k,
        m.qweight.data_ptr(),
        m.bits,
        m.lut.data_ptr(),
        m.sp_rows.data_ptr() if sparse else None,
        m.sp_cols.data_ptr() if sparse else None,
        m.sp_vals.data_ptr() if sparse else None,
        n,
        y.data_ptr(),
    )
    return y.to(x.dtype)
