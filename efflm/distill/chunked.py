"""A distillation divergence through the student's LM head without holding ``[tokens, vocab]``
student logits for the backward pass (the KD counterpart of ``finetune.loss.chunked_cross_entropy``).

``chunked_divergence`` walks the tokens ``chunk`` at a time: for each chunk it computes the
student's logits from the hidden states, the divergence against the teacher's logits for the
same tokens, and at once that chunk's gradients with respect to the hidden states and the head
weight (a local autograd pass), then drops the logits. The backward pass only scales the stored
gradients. Any divergence of ``efflm.distill.divergence`` (or one with its signature) works;
the mean is over all tokens, so chunking changes nothing but memory.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Divergence = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (student, teacher) -> mean


class _ChunkedDivergence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, teacher, divergence, chunk):
        n = h.shape[0]
        grad_h = torch.empty_like(h)
        want_w = ctx.needs_input_grad[1]
        grad_w = torch.zeros_like(w, dtype=torch.float32) if want_w else None
        total = h.new_zeros((), dtype=torch.float32)
        for i in range(0, n, chunk):
            with torch.enable_grad():
                hc = h[i : i + chunk].detach().requires_grad_()
                wc = w.detach().requires_grad_(want_w)
                loss = divergence(hc @ wc.T, teacher[i : i + chunk]) * (hc.shape[0] / n)
                grads = torch.autograd.grad(loss, [hc, wc] if want_w else [hc])
            grad_h[i : i + chunk] = grads[0]
            if want_w:
                grad_w += grads[1].float()
            total += loss.detach().float()
        ctx.save_for_backward(grad_h, grad_w if grad_w is not None else torch.empty(0))
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        gw = (grad_w * grad_out).to(grad_out.dtype) if grad_w.numel() else None
        return grad_h * grad_out.to(grad_h.dtype), gw, None, None, None


def chunked_divergence(
    hidden: torch.Tensor, head_weight: torch.Tensor, teacher_logits: torch.Tensor, divergence: Divergence, chunk: int
) -> torch.Tensor:
    """Mean ``divergence(student_logits, teacher_logits)`` over the tokens of ``hidden [N, H]``,
    the student's logits being ``hidden @ head_weightᵀ`` made ``chunk`` tokens at a time
    (``chunk`` ≤ 0: all at once, the plain way). ``teacher_logits [N, V]`` carry no gradient.
    Tokens that do not count are dropped before the call (as ``chunked_cross_entropy`` does)."""
    teacher_logits = teacher_logits.detach()
    if chunk <= 0:
        return divergence(hidden @ head_weight.T, teacher_logits)
    return _ChunkedDivergence.apply(hidden, head_weight, teacher_logits, divergence, chunk)
