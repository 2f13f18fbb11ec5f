"""Layer-wise hidden-state matching, the intermediate-layer term of distillation into a pruned or
shallower student (TinyBERT-style): each chosen student layer's output is pulled towards the
output of its mapped teacher layer by a mean squared error, normalized by the teacher state's
mean square so the term's scale does not depend on the model's activation size.

When the student has fewer layers than the teacher, student layer i (of n) maps uniformly to
teacher layer round((i + 1)·m / n) − 1 (of m): the last layer to the last, the rest spread.
"""

from __future__ import annotations

import torch


def layer_map(n_student: int, n_teacher: int) -> list[int]:
    """Teacher layer index for each student layer."""
    return [round((i + 1) * n_teacher / n_student) - 1 for i in range(n_student)]


def hidden_mse(
    student: tuple[torch.Tensor, ...],
    teacher: tuple[torch.Tensor, ...],
    layers: tuple[int, ...],
    mask: torch.Tensor,
) -> torch.Tensor:
    """Mean normalized MSE over the student ``layers`` (``()``: all), ``student``/``teacher`` being
    Hugging Face ``hidden_states`` tuples (index 0 the embeddings, i + 1 layer i's output) and
    ``mask [B, T]`` the positions that count."""
    n_s, n_t = len(student) - 1, len(teacher) - 1
    mapping = layer_map(n_s, n_t)
    chosen = layers or tuple(range(n_s))
    m = mask.to(student[1].dtype)[..., None]
    total = student[1].new_zeros(())
    for i in chosen:
        s, t = student[i + 1], teacher[mapping[i] + 1].detach()
        err = ((s - t) ** 2 * m).sum() / (m.sum() * s.shape[-1]).clamp(min=1)
        scale = ((t**2) * m).sum() / (m.sum() * t.shape[-1]).clamp(min=1)
        total = total + err / scale.clamp(min=1e-12)
    return total / len(chosen)
