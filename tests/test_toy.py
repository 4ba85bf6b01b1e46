import pytest
import torch

from lessonlib.diffusion import denoising_loss, q_sample
from lessonlib.nets.toy import ToyEpsMLP
from lessonlib.schedules import cosine_schedule, linear_schedule
from lessonlib.toy import GaussianMixture2D, eps_error_by_t

TOY = GaussianMixture2D()


@pytest.mark.parametrize("abar", [1.0, 0.7, 0.05])
def test_score_is_autograd_of_log_prob(abar):
    x = torch.randn(7, 2, dtype=torch.float64).requires_grad_()
    for y in (None, 1):
        logp = TOY.log_prob(x, abar) if y is None else TOY.log_joint(x, abar)[:, y]
        (grad,) = torch.autograd.grad(logp.sum(), x)
        torch.testing.assert_close(TOY.score(x.detach(), abar, y), grad)


def test_posterior_is_a_distribution_and_matches_bayes():
    x = torch.randn(9, 2)
    p = TOY.posterior(x, 0.5)
    torch.testing.assert_close(p.sum(1), torch.ones(9, dtype=torch.float64))
    log_joint = TOY.log_joint(x, 0.5)
    torch.testing.assert_close(p[:, 1].log(), log_joint[:, 1] - torch.logsumexp(log_joint, 1))


def test_noisy_marginal_moments_match_q_sample():
    s = cosine_schedule(1000)
    g = torch.Generator().manual_seed(0)
    x0, _ = TOY.sample(200_000, generator=g)
    x_t = q_sample(s, x0, torch.tensor(300), generator=g)
    a = s.abar[300].item()
    mean = (TOY.weights[:, None] * TOY.means).sum(0) * a**0.5
    torch.testing.assert_close(x_t.mean(0).double(), mean, atol=0.01, rtol=0)
    # a density check on a grid: the exact log p_t integrates to one
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-6, 6, 301)] * 2, indexing="ij"), -1).reshape(-1, 2)
    mass = TOY.log_prob(grid, a).exp().sum() * (12 / 300) ** 2
    assert mass.item() == pytest.approx(1.0, abs=1e-3)


def test_exact_eps_minimises_the_denoising_loss():
    s = linear_schedule(1000)
    x0, _ = TOY.sample(4096, generator=torch.Generator().manual_seed(0))
    loss = lambda fn: denoising_loss(lambda x, t: fn(x, t), x0, s, generator=torch.Generator().manual_seed(1)).item()
    exact = loss(TOY.eps_fn(s))
    assert exact < loss(lambda x, t: torch.zeros_like(x)) - 0.2
    assert exact < loss(lambda x, t: 0.9 * TOY.eps_fn(s)(x, t))


def test_eps_error_is_zero_for_the_exact_eps_and_positive_for_an_untrained_net():
    s = linear_schedule(100)
    exact = eps_error_by_t(TOY.eps_fn(s), TOY, s, [0, 50, 99], n=500)
    assert torch.all(exact["relative_error"] == 0)
    torch.testing.assert_close(exact["dsm_loss"], exact["dsm_floor"])
    net = ToyEpsMLP()
    assert torch.all(eps_error_by_t(net, TOY, s, [0, 50, 99], n=500)["relative_error"] > 1e-3)


def test_tilted_sample_at_scale_zero_is_the_mixture():
    from lessonlib.metrics import energy_distance
    g = torch.Generator().manual_seed(0)
    ref, _ = TOY.sample(2000, generator=g)
    assert energy_distance(TOY.tilted_sample(2000, 0, 0.0, generator=g), ref) < 0.01
    assert energy_distance(TOY.tilted_sample(2000, 0, 5.0, generator=g), ref) > 0.1


@pytest.mark.parametrize("bad", [torch.zeros(3, 3), torch.zeros(3)])
def test_bad_point_shapes(bad):
    with pytest.raises(ValueError, match="\\(B, 2\\)"):
        TOY.score(bad, 0.5)


def test_bad_class():
    with pytest.raises(ValueError, match="0..2"):
        TOY.eps_fn(linear_schedule(10), 3)(torch.zeros(2, 2), torch.tensor([1, 1]))
