"""Next-token cross-entropy through the LM head without ever holding ``[tokens, vocab]`` logits.

``chunked_cross_entropy`` walks the tokens ``chunk`` at a time; for each chunk it computes the
logits, the loss and — in the same pass — the loss's gradient with respect to the hidden
states, ``(softmax − onehot) · W / n``, then drops the logits. The backward pass only scales
that stored ``[tokens, hidden]`` gradient, so nothing is recomputed: the head costs one forward
and one backward matmul, as with full logits, while memory holds one chunk of logits (and the
head weight's gradient is accumulated chunk by chunk when the head is trained).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class _FusedHeadCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, y: torch.Tensor, chunk: int, n: int):
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros_like(w, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        total = h.new_zeros((), dtype=torch.float32)
        for i in range(0, h.shape[0], chunk):
            hc, yc = h[i : i + chunk], y[i : i + chunk]
            logits = (hc @ w.T).float()
            target = logits.gather(1, yc[:, None]).squeeze(1)
            top = logits.amax(dim=-1, keepdim=True)
            g = logits.sub_(top).exp_()  # softmax made in place: no second [chunk, vocab] tensor
            norm = g.sum(dim=-1, keepdim=True)
            total += (top.squeeze(1) + norm.log().squeeze(1) - target).sum()
            g.div_(norm)
            g[torch.arange(g.shape[0], device=g.device), yc] -= 1.0
            g = g.to(h.dtype)
            grad_h[i : i + chunk] = g @ w
            if grad_w is not None and g.dtype == grad_w.dtype:
                grad_w.addmm_(g.T, hc)  # in place: no [vocab, hidden] temporary per chunk
            elif grad_w is not None:
                grad_w += (g.T @ hc).float()
        ctx.save_for_backward(grad_h, grad_w if grad_w is not None else torch.empty(0))
        ctx.n = n
        return total / n

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        scale = grad_out / ctx.n
        gw = (grad_w * scale).to(grad_out.dtype) if grad_w.numel() else None
        return grad_h * scale.to(grad_h.dtype), gw, None, None, None


def head_weight(head: nn.Module) -> torch.Tensor | None:
    """The head's ``[vocab, hidden]`` weight if it is a plain bias-free linear map, else None."""
    if isinstance(head, nn.Linear) and head.bias is None:
        return head.weight
    return None


def chunked_cross_entropy(hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor, chunk: int) -> torch.Tensor:
    """Mean next-token cross-entropy of ``hidden [B, T, H]`` against ``labels`` (−100 ignored),
    ``chunk`` tokens of logits at a time (``chunk`` ≤ 0: all logits at once, the plain way)."""
    h, y = hidden[:, :-1].reshape(-1, hidden.shape[-1]), labels[:, 1:].reshape(-1)
    keep = y != -100
    h, y = h[keep], y[keep]
    n = max(int(y.numel()), 1)
    w = head_weight(head)
    if chunk <= 0 or w is None:  # a quantized or biased head: its own forward, full logits
        return F.cross_entropy(head(h).float(), y, reduction="sum") / n
    if not torch.is_grad_enabled():  # the loss only (MeZO's evaluations): no gradient made or held
        total = sum(float(F.cross_entropy((h[i : i + chunk] @ w.T).float(), y[i : i + chunk], reduction="sum"))
                    for i in range(0, h.shape[0], chunk))  # fmt: skip
        return torch.tensor(total / n)
    return _FusedHeadCE.apply(h, w, y, chunk, n)
