"""``QuantLinear``: the one replacement point for a quantized ``nn.Linear``.

It holds integer codes as tightly as a byte allows plus fp16 per-group scales (and offsets
for asymmetric grids) — never a float copy of the weight. Storage layouts:

* ``nibble``: two 2..4-bit codes per byte (the file layout for those widths);
* ``q4blk``: the same bytes in 32-input blocks for efflm's own AVX2 kernel
  (``q4_kernel``), used when the module computes in bf16, the group size is a multiple of
  32 and the kernel is available on this machine (it reads the fp16 scales directly);
* ``int4pack``: the same bytes in the order of torch's int4 CPU kernel, used in bf16 where
  efflm's kernel is not available and the group size is 32/64/128/256 (plus bf16 (scale,
  zero) pairs the kernel reads);
* ``i8``: 5..8-bit symmetric codes as signed int8 (per-channel ones run through torch's
  int8 kernel); ``u8``: 5..8-bit asymmetric codes.

``forward`` uses a kernel where one applies and otherwise dequantizes and calls
``F.linear`` (tested to agree). The harness counts these buffers as the model's bytes.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from efflm.quantize import kernels, q4_kernel


def pack_codes(q: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [out, in] -> packed uint8; two codes per byte when bits <= 4."""
    q = q.to(torch.uint8)
    if bits > 4:
        return q.contiguous()
    return (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()


def unpack_codes(packed: torch.Tensor, bits: int, in_features: int) -> torch.Tensor:
    if bits > 4:
        return packed
    out = torch.empty(packed.shape[0], in_features, dtype=torch.uint8, device=packed.device)
    out[:, 0::2] = packed & 0x0F
    out[:, 1::2] = packed >> 4
    return out


class QuantLinear(nn.Module):
    """Weight-only quantized Linear: ``W[o, g*G:(g+1)*G] = scale[o,g] * (q - z) (+ offset)``."""

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int,
                 symmetric: bool, bias: bool = False, dtype: torch.dtype = torch.float32):
        super().__init__()
        if in_features % 2:
            raise ValueError("QuantLinear needs an even in_features")
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.symmetric = bits, symmetric
        self.group_size = group_size if group_size > 0 else in_features
        groups = in_features // self.group_size
        if bits <= 4:
            self.layout, qshape, qdtype = "nibble", (out_features, in_features // 2), torch.uint8
        else:
            self.layout, qshape = ("i8", (out_features, in_features)) if symmetric else ("u8", (out_features, in_features))
            qdtype = torch.int8 if symmetric else torch.uint8
        self.register_buffer("qweight", torch.zeros(qshape, dtype=qdtype))
        self.register_buffer("scales", torch.ones(out_features, groups, dtype=torch.float16))
        if not symmetric:
            self.register_buffer("offsets", torch.zeros(out_features, groups, dtype=torch.float16))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None
        self.compute_dtype = dtype
        self._repack()

    def spec(self) -> dict:
        """Constructor arguments, saved with the model so a loader can rebuild the shell."""
        return {"in_features": self.in_features, "out_features": self.out_features, "bits": self.bits,
                "group_size": self.group_size, "symmetric": self.symmetric,
                "bias": self.bias is not None, "dtype": str(self.compute_dtype).removeprefix("torch.")}

    @classmethod
    def from_spec(cls, spec: dict) -> "QuantLinear":
        return cls(**{**spec, "dtype": getattr(torch, spec["dtype"])})

    # --- storage ---------------------------------------------------------------------------
    def _int4_kernel_ok(self) -> bool:
        return self.bits <= 4 and self.compute_dtype == torch.bfloat16 and self.group_size in kernels.INT4_GROUPS

    def _wanted_layout(self) -> str:
        if self.bits <= 4 and self.compute_dtype == torch.bfloat16 and self.group_size % 32 == 0 \
                and q4_kernel.available():
            return "q4blk"
        return "int4pack" if self._int4_kernel_ok() else ("nibble" if self.bits <= 4 else self.layout)

    def _repack(self) -> None:
        """Move the codes into the layout the compute dtype wants (same bytes either way)."""
        want = self._wanted_layout()
        if want == self.layout and (want != "int4pack" or hasattr(self, "sz")):
            return
        codes = self.codes()
        self.layout = want
        if hasattr(self, "sz"):
            del self.sz
        if want == "int4pack":
            self.qweight = kernels.int4pack(codes + kernels.code_shift(self.bits))
        elif want == "q4blk":
            self.qweight = q4_kernel.to_blocks(codes + kernels.code_shift(self.bits))
        else:
            self.qweight = pack_codes(codes, self.bits)
        self._refresh_sz()

    def _refresh_sz(self) -> None:
        if self.layout == "int4pack":
            sz = kernels.int4_scales_and_zeros(self.scales, getattr(self, "offsets", None), self.bits)
            self.register_buffer("sz", sz, persistent=False)

    def codes(self) -> torch.Tensor:
        """uint8 codes [out, in] in [0, 2^bits − 1], whatever the storage layout."""
        if self.layout == "int4pack":
            codes = kernels.int4pack_to_codes(self.qweight, self.out_features, self.in_features)
            return codes - kernels.code_shift(self.bits)
        if self.layout == "q4blk":
            return q4_kernel.from_blocks(self.qweight, self.in_features) - kernels.code_shift(self.bits)
        if self.layout == "i8":
            return (self.qweight.to(torch.int16) + 2 ** (self.bits - 1)).to(torch.uint8)
        return unpack_codes(self.qweight, self.bits, self.in_features)

    def set_codes(self, q: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None) -> None:
        self.scales.copy_(scales)
        if offsets is not None:
            self.offsets.copy_(offsets)
        q = q.to(torch.uint8)
        if self.layout == "int4pack":
            self.qweight = kernels.int4pack(q + kernels.code_shift(self.bits))
        elif self.layout == "q4blk":
            self.qweight = q4_kernel.to_blocks(q + kernels.code_shift(self.bits))
        elif self.layout == "i8":
            self.qweight = (q.to(torch.int16) - 2 ** (self.bits - 1)).to(torch.int8)
        else:
            self.qweight = pack_codes(q, self.bits)
        self._refresh_sz()

    def set_compute_dtype(self, dtype: torch.dtype) -> None:
        self.compute_dtype = dtype
        if self.bias is not None:
            self.bias.data = self.bias.data.to(dtype)
        self._repack()

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.layout in ("int4pack", "q4blk"):  # files hold the portable nibble layout
            destination[prefix + "qweight"] = pack_codes(self.codes(), self.bits)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "qweight"
        if self.layout == "int4pack" and key in state_dict:
            codes = unpack_codes(state_dict[key], self.bits, self.in_features)
            state_dict[key] = kernels.int4pack(codes + kernels.code_shift(self.bits))
        elif self.layout == "q4blk" and key in state_dict:
            codes = unpack_codes(state_dict[key], self.bits, self.in_features)
            state_dict[key] = q4_kernel.to_blocks(codes + kernels.code_shift(self.bits))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._refresh_sz()

    # --- compute ---------------------------------------------------------------------------
    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        from efflm.quantize.rtn import dequantize

        w = dequantize(self.codes(), self.scales, getattr(self, "offsets", None), self.bits, self.group_size)
        return w.to(dtype or self.compute_dtype)

    def kernel(self, x: torch.Tensor) -> str | None:
        """Name of the packed kernel this input would use, or None for the dequantize path."""
        if self.layout == "int4pack" and x.dtype == torch.bfloat16:
            return "int4"
        if self.layout == "q4blk" and x.dtype == torch.bfloat16:
            return "q4"
        # int8 kernel: bf16 only (with fp32 activations it measured ~25x slower than dequantizing)
        if self.layout == "i8" and self.group_size == self.in_features and x.dtype == torch.bfloat16:
            if self.bits == 8 and self.in_features % 32 == 0 and q4_kernel.available():
                return "q8"
            return "int8"
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind = self.kernel(x)
        if kind == "int4":
            y = kernels.int4_mm(x, self.qweight, self.group_size, self.sz)
        elif kind == "q4":
            y = q4_kernel.q4_mm(x, self.qweight, self.scales, getattr(self, "offsets", None),
                                2 ** (self.bits - 1), self.group_size)
        elif kind == "q8":
            y = q4_kernel.q8_mm(x, self.qweight, self.scales)
        elif kind == "int8":
            y = kernels.int8_mm(x, self.qweight, self.scales[:, 0].to(x.dtype))
        else:
            return F.linear(x, self.dequantize(x.dtype), self.bias)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, symmetric={self.symmetric}, layout={self.layout}")
