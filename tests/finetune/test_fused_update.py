"""LOMO and AdaLomo: the fused (in-backward) step against the same maths applied after a plain
backward, and no gradient outliving its parameter's update."""

import pytest
import torch

from efflm.finetune.adalomo import AdaLomoRule, adalomo
from efflm.finetune.fused_update import FusedUpdate
from efflm.finetune.lomo import lomo, sgd_rule


def _loss(model, ids):
    return model(ids, labels=ids).loss


def _trainable(model):
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _reference_step(model, ids, rule, lr, max_grad_norm=0.0):
    loss = _loss(model, ids)
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    scale = 1.0
    if max_grad_norm > 0:
        norm = torch.sqrt(sum(p.grad.float().pow(2).sum() for p in params))
        scale = min(1.0, max_grad_norm / (float(norm) + 1e-6))
    with torch.no_grad():
        for p in params:
            rule(p, p.grad * scale if scale != 1.0 else p.grad, lr)
            p.grad = None
    return float(loss.detach())


@pytest.mark.parametrize("kind", ["lomo", "adalomo"])
@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_fused_steps_equal_the_unfused_reference(tiny, kind, clip):
    from efflm.io.load import load

    ids = torch.randint(3, 259, (2, 16), generator=torch.Generator().manual_seed(0))
    fused_model, ref_model = _trainable(tiny[0]), _trainable(load("tiny-llama")[0])
    opt = (lomo if kind == "lomo" else adalomo)(fused_model.parameters(), weight_decay=0.01, max_grad_norm=clip)
    ref_rule = sgd_rule(0.01) if kind == "lomo" else AdaLomoRule(weight_decay=0.01)
    for _ in range(3):  # AdaLomo's state matters from the second step on
        norm = opt.step(_loss(fused_model, ids), lr=0.05)
        _reference_step(ref_model, ids, ref_rule, 0.05, clip)
        assert (norm == norm) == (clip > 0)  # measured only when clipping
    opt.close()
    for (name, a), b in zip(fused_model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(fused_model.model.embed_tokens.weight, load("tiny-llama")[0].model.embed_tokens.weight)


def test_no_gradient_outlives_its_parameters_update(tiny):
    model = _trainable(tiny[0])
    params = list(model.parameters())
    alive = []

    def rule(p, g, lr):
        alive.append(sum(q.grad is not None for q in params))
        p.add_(g, alpha=-lr)

    opt = FusedUpdate(params, rule, max_grad_norm=1.0)
    opt.step(_loss(model, torch.randint(3, 259, (2, 16))), lr=0.01)
    opt.close()
    assert len(alive) == len(params) and max(alive) == 0  # the hook drops .grad before the rule runs
    assert all(p.grad is None for p in params)


def _adalomo_reference(p, g, lr, st, eps=(1e-30, 1e-3), clip=1.0, decay=-0.8, wd=0.01):
    """AdaLomo's update written whole-matrix at once (the paper's equations, as lomo-optim has them)."""
    st["t"] = st.get("t", 0) + 1
    beta2 = 1.0 - st["t"] ** decay
    sq = g * g + eps[0]
    st.setdefault("row", torch.zeros(g.shape[0])).mul_(beta2).add_(sq.mean(-1), alpha=1 - beta2)
    st.setdefault("col", torch.zeros(g.shape[1])).mul_(beta2).add_(sq.mean(-2), alpha=1 - beta2)
    u = (st["row"] / st["row"].mean()).rsqrt()[:, None] * st["col"].rsqrt()[None, :] * g
    u = u / ((u.norm() / u.numel() ** 0.5) / clip).clamp(min=1.0)
    step = lr * max(eps[1], float(p.norm() / p.numel() ** 0.5))
    return p * (1 - step * wd) - step * u


def test_adalomo_block_by_block_update_equals_the_whole_matrix_equations(monkeypatch):
    import efflm.finetune.adalomo as mod

    monkeypatch.setattr(mod, "BLOCK", 7 * 16)  # 7 rows per block of a [50, 16] matrix: uneven blocks
    g0 = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(50, 16, generator=g0))
    rule, ref_state, want = AdaLomoRule(weight_decay=0.01), {}, p.detach().clone()
    for _ in range(3):
        g = torch.randn(50, 16, generator=g0)
        want = _adalomo_reference(want, g, 1e-2, ref_state)
        with torch.no_grad():
            rule(p, g, 1e-2)
        torch.testing.assert_close(p.detach(), want, rtol=1e-5, atol=1e-6)
