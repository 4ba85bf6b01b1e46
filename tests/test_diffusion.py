import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lessonlib.diffusion import (
    denoising_loss,
    eps_from_score,
    eps_from_x0,
    min_snr_weights,
    posterior_mean_variance,
    q_sample,
    score_from_eps,
    x0_from_eps,
)
from lessonlib.schedules import cosine_schedule, linear_schedule

SCHED = {"linear": linear_schedule(1000), "cosine": cosine_schedule(1000)}


@settings(max_examples=40, deadline=None)
@given(t=st.integers(0, 999), kind=st.sampled_from(list(SCHED)), seed=st.integers(0, 2**31 - 1))
def test_conversions_round_trip(t, kind, seed):
    s, g = SCHED[kind], torch.Generator().manual_seed(seed)
    x0, eps = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    tt = torch.full((4,), t)
    x_t = q_sample(s, x0, tt, eps)
    torch.testing.assert_close(x0_from_eps(s, x_t, tt, eps), x0, rtol=1e-6, atol=1e-6 * (1 + 1 / s.abar[t].sqrt().item()))
    torch.testing.assert_close(eps_from_x0(s, x_t, tt, x0), eps, rtol=1e-6, atol=1e-6 / (1 - s.abar[t]).sqrt().item())
    torch.testing.assert_close(eps_from_score(s, tt, score_from_eps(s, tt, eps)), eps)


def test_score_is_grad_log_q_by_autograd(gen):
    """grad_x log N(x; sqrt(a) x0, (1 - a) I) = -eps / sqrt(1 - a)."""
    s = linear_schedule(1000)
    x0, eps = (torch.randn(5, 2, generator=gen, dtype=torch.float64) for _ in range(2))
    t = torch.tensor([0, 3, 300, 700, 999])
    x_t = q_sample(s, x0, t, eps).requires_grad_()
    a = s.abar[t].reshape(-1, 1)
    log_q = (-(x_t - a.sqrt() * x0) ** 2 / (2 * (1 - a))).sum()
    (grad,) = torch.autograd.grad(log_q, x_t)
    torch.testing.assert_close(grad, score_from_eps(s, t, eps))


@pytest.mark.parametrize("t", [0, 250, 999])
def test_q_sample_moments(t, gen):
    s = linear_schedule(1000)
    x0 = torch.full((200_000, 1), 0.7)
    x_t = q_sample(s, x0, torch.tensor(t), generator=gen)
    a = s.abar[t].item()
    assert x_t.mean().item() == pytest.approx(a**0.5 * 0.7, abs=0.01)
    assert x_t.var().item() == pytest.approx(1 - a, rel=0.02, abs=1e-6)


@pytest.mark.parametrize("t, t_prev", [(500, None), (999, 900), (40, -1)])
def test_posterior_is_consistent_with_forward_process(t, t_prev, gen):
    """x_t ~ q(x_t | x0) then x_s ~ q(x_s | x_t, x0) must give x_s ~ q(x_s | x0) = N(sqrt(a_s) x0, 1 - a_s)."""
    s = linear_schedule(1000)
    x0 = torch.full((200_000, 1), -0.5, dtype=torch.float64)
    x_t = q_sample(s, x0, torch.tensor(t), generator=gen)
    mean, var = posterior_mean_variance(s, x0, x_t, torch.tensor(t), t_prev)
    x_s = mean + var.sqrt() * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    a_s = 1.0 if t_prev == -1 else s.abar[t - 1 if t_prev is None else t_prev].item()
    assert x_s.mean().item() == pytest.approx(a_s**0.5 * -0.5, abs=0.005)
    assert x_s.var().item() == pytest.approx(1 - a_s, rel=0.02, abs=1e-6)


def test_posterior_rejects_forward_steps():
    s = linear_schedule(10)
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="smaller than t"):
        posterior_mean_variance(s, x, x, torch.tensor([3, 3]), 5)


def test_shape_mismatch_is_named():
    s = linear_schedule(10)
    with pytest.raises(ValueError, match="x0: \\(2, 3\\), noise: \\(2, 4\\)"):
        q_sample(s, torch.zeros(2, 3), torch.tensor([1, 2]), torch.zeros(2, 4))


def test_denoising_loss_is_reproducible_and_uses_the_model(gen):
    s = linear_schedule(100)
    x0 = torch.randn(64, 2, generator=gen)
    zero = lambda x, t: torch.zeros_like(x)
    l1 = denoising_loss(zero, x0, s, generator=torch.Generator().manual_seed(1))
    l2 = denoising_loss(zero, x0, s, generator=torch.Generator().manual_seed(1))
    assert l1.item() == l2.item() and 0.7 < l1.item() < 1.3  # E||eps||^2 per coordinate is 1
    assert denoising_loss(lambda x, t: x, x0, s, generator=gen).item() != l1.item()


def test_min_snr_weights_cap_the_clean_timesteps_and_weight_the_loss_per_sample():
    s = linear_schedule(1000)
    t = torch.tensor([0, 100, 300, 600, 999])
    w = min_snr_weights(s, t, 5.0)
    snr = s.abar[t] / (1 - s.abar[t])
    torch.testing.assert_close(w[snr > 5], (5 / snr[snr > 5]).to(w))
    assert torch.all(w[snr <= 5] == 1) and w[0] < 0.01 and (snr > 5).any() and (snr <= 5).any()
    x0 = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731 - its error is the noise itself
    weighted = denoising_loss(zero, x0, s, t=t, generator=torch.Generator().manual_seed(2), min_snr_gamma=5.0)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(weighted, (noise.pow(2).flatten(1).mean(1) * w.float()).mean())
    with pytest.raises(ValueError, match="positive number"):
        min_snr_weights(s, t, 0.0)
