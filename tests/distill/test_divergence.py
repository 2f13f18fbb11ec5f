"""The distillation divergences against closed forms."""

import pytest
import torch

from efflm.core.errors import ConfigError
from efflm.distill.divergence import forward_kl, generalized_jsd, reverse_kl


def _logits(seed, tokens=6, vocab=11, scale=2.0):
    return torch.randn(tokens, vocab, generator=torch.Generator().manual_seed(seed)) * scale


def _kl(p, q):  # closed form, row by row, in float64
    return (p * (p.log() - q.log())).sum(-1)


def test_forward_and_reverse_kl_match_the_closed_form_with_temperature():
    s, t = _logits(0), _logits(1)
    for tau in (1.0, 2.0, 0.5):
        p, q = (t.double() / tau).softmax(-1), (s.double() / tau).softmax(-1)
        torch.testing.assert_close(forward_kl(s, t, tau).double(), _kl(p, q).mean() * tau**2, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(reverse_kl(s, t, tau).double(), _kl(q, p).mean(), rtol=1e-5, atol=1e-6)


def test_generalized_jsd_matches_its_definition_and_its_endpoints():
    s, t = _logits(2), _logits(3)
    p, q = t.double().softmax(-1), s.double().softmax(-1)
    for beta in (0.1, 0.5, 0.9):
        m = beta * p + (1 - beta) * q
        want = (beta * _kl(p, m) + (1 - beta) * _kl(q, m)).mean()
        torch.testing.assert_close(generalized_jsd(s, t, beta).double(), want, rtol=1e-5, atol=1e-6)
    assert torch.equal(generalized_jsd(s, t, 0.0), forward_kl(s, t))
    assert torch.equal(generalized_jsd(s, t, 1.0), reverse_kl(s, t))
    # and the endpoints are the limits of the rescaled divergence
    b = 1e-4
    torch.testing.assert_close(generalized_jsd(s, t, b) / b, forward_kl(s, t), rtol=2e-2, atol=1e-4)
    torch.testing.assert_close(generalized_jsd(s, t, 1 - b) / b, reverse_kl(s, t), rtol=2e-2, atol=1e-4)


def test_zero_for_equal_distributions_positive_otherwise_and_masked_tokens_do_not_count():
    s, t = _logits(4), _logits(5)
    for fn in (forward_kl, reverse_kl, generalized_jsd):
        assert fn(s, s).abs() < 1e-6 and fn(s, t) > 0
    mask = torch.tensor([1, 1, 0, 1, 0, 0], dtype=torch.bool)
    for fn in (forward_kl, reverse_kl, generalized_jsd):
        torch.testing.assert_close(fn(s, t, mask=mask), fn(s[mask], t[mask]))


def test_gradient_reaches_the_student_and_moves_it_toward_the_teacher():
    s, t = _logits(6).requires_grad_(), _logits(7)
    for fn in (forward_kl, reverse_kl, generalized_jsd):
        s.grad = None
        loss = fn(s, t)
        loss.backward()
        with torch.no_grad():
            assert fn(s - 0.1 * s.grad, t) < loss


def test_bad_temperature_and_beta_are_config_errors():
    s, t = _logits(8), _logits(9)
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        forward_kl(s, t, temperature=0)
    with pytest.raises(ConfigError, match="beta must be in"):
        generalized_jsd(s, t, beta=1.5)
