import pytest
import torch

from lessonlib.diffusion import posterior_mean_variance, x0_from_eps
from lessonlib.guidance import (
    batched_cfg,
    batched_compose,
    batched_predictions,
    cfg,
    combine,
    compose,
    conditional,
    grad_guidance,
    mean_shift_factor,
)
from lessonlib.samplers import ddpm_step, sample
from lessonlib.schedules import linear_schedule
from lessonlib.toy import GaussianMixture2D

S = linear_schedule(1000)
TOY = GaussianMixture2D()
X = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
T = torch.tensor([0, 5, 100, 400, 800, 999])


def test_cfg_endpoints_are_exact():
    eps_c, eps_u = TOY.eps_fn(S, 1), TOY.eps_fn(S)
    assert torch.equal(cfg(eps_c, eps_u, 0.0)(X, T), eps_u(X, T))
    assert torch.equal(cfg(eps_c, eps_u, 1.0)(X, T), eps_c(X, T))


def test_both_cfg_conventions_are_the_same_numbers():
    eps_c, eps_u = TOY.eps_fn(S, 1)(X, T), TOY.eps_fn(S)(X, T)
    for w in [0.5, 2.0, 6.0]:
        torch.testing.assert_close(combine(eps_u, [(eps_c, 1 + w)]), (1 + w) * eps_c - w * eps_u)


def test_compose_with_one_term_is_cfg():
    eps_c, eps_u = TOY.eps_fn(S, 2), TOY.eps_fn(S)
    for s in [-1.0, 0.3, 3.0]:
        assert torch.equal(compose(eps_u, [(eps_c, s)])(X, T), cfg(eps_c, eps_u, s)(X, T))


def test_compose_sums_directions_with_negative_weights():
    e = {k: TOY.eps_fn(S, k)(X, T) for k in range(3)}
    eps_u = TOY.eps_fn(S)(X, T)
    got = compose(TOY.eps_fn(S), [(TOY.eps_fn(S, 0), 2.0), (TOY.eps_fn(S, 1), -1.0)])(X, T)
    torch.testing.assert_close(got, eps_u + 2 * (e[0] - eps_u) - (e[1] - eps_u))


def test_zero_gradient_makes_grad_guidance_the_identity():
    eps = TOY.eps_fn(S)
    assert torch.equal(grad_guidance(eps, S, lambda x, t: torch.zeros_like(x), 7.5)(X, T), eps(X, T))
    assert grad_guidance(eps, S, lambda x, t: 1 / 0, 0.0) is eps  # scale 0 never evaluates the gradient


def test_bayes_split_exact_classifier_guidance_at_scale_1_is_the_conditional_eps():
    guided = grad_guidance(TOY.eps_fn(S), S, TOY.classifier_grad_fn(S, 2), 1.0)
    torch.testing.assert_close(guided(X, T), TOY.eps_fn(S, 2)(X, T))


def test_mean_shift_form_is_eps_form_with_scale_times_kappa():
    """Dhariwal & Nichol Alg. 1: x_{t-1} = mu + s sigma_t^2 grad + sigma_t z, for a full DDPM step t -> t-1,
    equals the eps form with scale s * kappa_t, kappa_t = sqrt(alpha_t)(1 - abar_{t-1})/(1 - abar_t)."""
    s, y = 3.0, 0
    x = X.double()
    eps_u, grad = TOY.eps_fn(S), TOY.classifier_grad_fn(S, y)
    guided = grad_guidance(eps_u, S, grad, s, form="mean_shift")
    for t in [1, 50, 500, 999]:
        tt = torch.full((6,), t)
        step, _ = ddpm_step(S, x, tt, t - 1, guided(x, tt), generator=torch.Generator().manual_seed(t))
        mean, var = posterior_mean_variance(S, x0_from_eps(S, x, tt, eps_u(x, tt)), x, tt)
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(t), dtype=x.dtype)
        torch.testing.assert_close(step, mean + s * var * grad(x, tt) + var.sqrt() * z)
        kappa = mean_shift_factor(S, tt, x)
        eps_form = grad_guidance(eps_u, S, grad, 1.0)
        torch.testing.assert_close(guided(x, tt), eps_u(x, tt) + s * kappa * (eps_form(x, tt) - eps_u(x, tt)))
    k = mean_shift_factor(S, torch.tensor([0, 1, 10, 100, 999]), torch.zeros(5, 1)).flatten()
    # kappa_0 = 0 (no shift on the last step), rising fast; for large t it tends to sqrt(alpha_t) ~ 0.99
    assert k[0] == 0 and k[0] < k[1] < k[2] < k[3] and 0.98 < k[3] < 1
    assert k[4].item() == pytest.approx(S.alphas[999].sqrt().item(), rel=1e-3)


def test_batched_pass_equals_separate_passes_in_one_call():
    calls = []
    model = TOY.model(S)
    def counting(x, t, y):
        calls.append(x.shape[0])
        return model(x, t, y)
    batched = batched_cfg(counting, 1, -1, 4.0)(X, T)
    assert calls == [12]  # one forward over the doubled batch
    separate = cfg(conditional(model, 1), conditional(model, -1), 4.0)(X, T)
    torch.testing.assert_close(batched, separate)
    eps_c, eps_u = batched_predictions(model, [torch.full((6,), 1), -1])(X, T)
    torch.testing.assert_close(eps_c, TOY.eps_fn(S, 1)(X, T))
    torch.testing.assert_close(eps_u, TOY.eps_fn(S)(X, T))


def test_batched_compose_matches_compose():
    model = TOY.model(S)
    got = batched_compose(model, -1, [(0, 1.5), (2, -0.5)])(X, T)
    want = compose(TOY.eps_fn(S), [(TOY.eps_fn(S, 0), 1.5), (TOY.eps_fn(S, 2), -0.5)])(X, T)
    torch.testing.assert_close(got, want)


def test_guidance_raises_class_probability():
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(500, 2, generator=g)
    def frac(scale):
        guided = grad_guidance(TOY.eps_fn(S), S, TOY.classifier_grad_fn(S, 2), scale)
        x = sample(guided, x_T, S, steps=50, generator=g)
        return TOY.posterior(x, 1.0)[:, 2].mean().item()
    p0, p1, p4 = frac(0.0), frac(1.0), frac(4.0)
    assert p0 < 0.35 < 0.8 < p1 < p4


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), "big", None])
def test_bad_scales(scale):
    eps = TOY.eps_fn(S)
    with pytest.raises(ValueError, match="scale|weight"):
        cfg(eps, eps, scale)
    with pytest.raises(ValueError, match="scale"):
        grad_guidance(eps, S, TOY.classifier_grad_fn(S, 0), scale)


def test_bad_form_and_mismatched_conditions():
    eps = TOY.eps_fn(S)
    with pytest.raises(ValueError, match="mean_shift"):
        grad_guidance(eps, S, TOY.classifier_grad_fn(S, 0), 1.0, form="mean")
    with pytest.raises(ValueError, match="does not fit a batch"):
        conditional(TOY.model(S), torch.tensor([0, 1, 2]))(X, T)
    with pytest.raises(ValueError, match="shape"):
        combine(torch.zeros(2, 2), [(torch.zeros(3, 2), 1.0)])
