"""MeZO: the two perturbed evaluations leave the weights bit-identical, the SPSA estimate tracks
the true directional derivative, and steps lower the loss."""

import torch

from efflm.finetune.mezo import MeZO


def _setup(tiny):
    model, _ = tiny
    for p in model.parameters():
        p.requires_grad_(True)
    ids = torch.randint(3, 259, (2, 16), generator=torch.Generator().manual_seed(0))
    return model, ids, (lambda: model(ids, labels=ids).loss)


def test_perturbed_evaluations_leave_the_weights_bit_identical(tiny):
    model, _, loss_fn = _setup(tiny)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    z = MeZO(model, eps=1e-2)
    plus, minus = z.loss_at(loss_fn, 1.0, 5), z.loss_at(loss_fn, -1.0, 5)
    assert plus != minus  # the perturbation did reach the forward
    with torch.no_grad():
        assert float(loss_fn()) not in (plus, minus)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_spsa_estimate_tracks_the_directional_derivative(tiny):
    model, _, loss_fn = _setup(tiny)
    loss_fn().backward()
    z = MeZO(model, eps=1e-3)
    est, true = [], []
    for seed in range(6):
        plus, minus = z.loss_at(loss_fn, 1.0, seed), z.loss_at(loss_fn, -1.0, seed)
        est.append((plus - minus) / 2e-3)
        true.append(sum(float((p.grad * z.z(i, p, seed)).sum()) for i, p in z.params.values()))
    est, true = torch.tensor(est), torch.tensor(true)
    assert torch.corrcoef(torch.stack([est, true]))[0, 1] > 0.99
    assert ((est - true).abs() / true.abs()).max() < 0.05


def test_steps_lower_the_loss_on_a_fixed_batch(tiny):
    model, _, loss_fn = _setup(tiny)
    with torch.no_grad():
        start = float(loss_fn())
    z = MeZO(model, eps=1e-3, seed=1)
    for _ in range(30):
        z.step(loss_fn, lr=1e-4)
    with torch.no_grad():
        assert float(loss_fn()) < start
    assert z.steps == 30
