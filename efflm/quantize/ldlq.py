"""GPTQ's solver — QuIP's LDLQ: round the columns of W one at a time onto a grid, feeding each
column's rounding error forward through the upper Cholesky factor of H⁻¹.

Shared by GPTQ (arXiv 2210.17323), whose paper introduced it, and QuIP (arXiv 2307.13304),
which proves this error feedback is LDLQ — the optimal linear feedback for the proxy loss
tr((Ŵ − W) H (Ŵ − W)ᵀ) — and runs it on incoherence-processed weights. The per-column sweep
inside a block is ``efflm.calib.sweep`` (in C).
"""

from __future__ import annotations

import torch

from efflm.calib.hessian import inverse_cholesky, mask_dead_columns
from efflm.calib.sweep import sweep
from efflm.nn.superblocks import KQUANTS
from efflm.quantize import grid


def gptq_quantize(
    W: torch.Tensor,
    H: torch.Tensor,
    bits: int,
    group_size: int,
    symmetric: bool,
    act_order: bool = False,
    damp: float = 0.01,
    block_size: int = 128,
    consume: bool = False,
    scales: str = "free",
):
    """Return (codes uint8 [out, in], fp16 scales, fp16 offsets | None, info dict); info["fallback"] if RTN.

    ``consume``: H is given away (``Hessian.take()``): it is overwritten and its memory released
    as soon as it has been permuted, so the solver holds two n × n matrices at most. ``scales``: the
    grid's scale structure (``grid.grid``); a K-quant's lattice spans 256 columns, so its grids are
    static (fixed from the original weights) even without act-order."""
    kind = scales
    W = W.float().clone()
    out, cols = W.shape
    g = group_size if group_size > 0 else cols
    H = mask_dead_columns(W, H, consume=consume)
    static = act_order or kind in KQUANTS
    if static:
        scales, offsets = grid.grid(W, bits, g, symmetric, kind)  # static groups from the original weights
        perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(cols, device=W.device)
    else:
        perm = torch.arange(cols, device=W.device)
        scales = torch.empty(out, cols // g, dtype=torch.float16, device=W.device)
        offsets = None if symmetric else torch.empty(out, cols // g, dtype=torch.float16, device=W.device)
    Hp = H.index_select(0, perm)  # H[perm][:, perm]; the caller's H is left as it was unless consumed
    if consume:
        H.untyped_storage().resize_(0)
    del H
    Hp = Hp.index_select(1, perm)
    U, lam = inverse_cholesky(Hp, damp, consume=True)  # Hp is this function's own copy
    del Hp
    if U is None:
        scales, offsets = grid.grid(W, bits, g, symmetric, kind)
        return grid.quantize(W, scales, offsets, bits, g), scales, offsets, {"fallback": "rtn", "damp": lam}
    W = W[:, perm]
    zeros = W == 0  # a pruned model (over 1% exact zeros) stays pruned
    zeros = zeros if symmetric and zeros.float().mean() > 0.01 else None
    codes = torch.empty(out, cols, device=W.device)
    col_group = perm // g  # group of each (permuted) column
    s_col = o_col = None
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        n = i2 - i1
        W1 = W[:, i1:i2].clone(memory_format=torch.contiguous_format)
        U1 = U[i1:i2, i1:i2].contiguous()
        err1, codes1 = torch.zeros_like(W1), torch.empty_like(W1)
        keep = None if zeros is None else zeros[:, i1:i2].contiguous()
        if static:  # static groups: this block's per-column grids, gathered once
            S = scales.float()[:, col_group[i1:i2]].contiguous()
            O = None if offsets is None else offsets.float()[:, col_group[i1:i2]].contiguous()
            sweep(W1, U1, 0, n, err1, bits=bits, scales=S, offsets=O, mask=keep, codes=codes1)
        else:  # a group's grid comes from its columns' values when the sweep reaches it
            S = torch.empty_like(W1)
            O = None if symmetric else torch.empty_like(W1)
            starts = [0] + [i for i in range(1, n) if (i1 + i) % g == 0]
            for a, b in zip(starts, starts[1:] + [n]):
                c = i1 + a
                if c % g == 0:
                    current = torch.cat([W1[:, a:], W[:, i2:]], dim=1)[:, :g]
                    grp_s, grp_o = grid.grid(current, bits, g, symmetric, kind)
                    scales[:, c // g] = grp_s[:, 0]
                    s_col = grp_s[:, 0].float()
                    if grp_o is not None:
                        offsets[:, c // g] = grp_o[:, 0]
                        o_col = grp_o[:, 0].float()
                S[:, a:b] = s_col[:, None]
                if O is not None:
                    O[:, a:b] = o_col[:, None]
                sweep(W1, U1, a, b, err1, bits=bits, scales=S, offsets=O, mask=keep, codes=codes1)
        codes[:, i1:i2] = codes1
        W[:, i2:] -= err1 @ U[i1:i2, i2:]
    codes = codes.to(torch.uint8)
    codes = codes[:, torch.argsort(perm)]
    return codes, scales, offsets, {"damp": lam}
