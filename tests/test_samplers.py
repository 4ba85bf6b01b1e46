import pytest
import torch

from lessonlib.metrics import energy_distance
from lessonlib.samplers import ddim_step, ddpm_step, sample, sample_steps, timestep_sequence
from lessonlib.schedules import linear_schedule
from lessonlib.toy import GaussianMixture2D

S = linear_schedule(1000)
TOY = GaussianMixture2D()


@pytest.mark.parametrize("method, steps", [("ddpm", 1000), ("ddim", 50), ("ddpm", 100)])
def test_exact_eps_reproduces_the_toy_distribution(method, steps):
    g = torch.Generator().manual_seed(0)
    ref, _ = TOY.sample(2000, generator=g)
    x = sample(TOY.eps_fn(S), torch.randn(2000, 2, generator=g), S, steps=steps, method=method, generator=g)
    # two independent 2000-point samples of the mixture differ by |d| < 0.003; 3-step DDIM gives ~0.48
    assert energy_distance(x, ref) < 0.012


def test_too_few_steps_is_measurably_wrong():
    """The bound above can fail: a 3-step DDIM is far from the data."""
    g = torch.Generator().manual_seed(0)
    ref, _ = TOY.sample(2000, generator=g)
    x = sample(TOY.eps_fn(S), torch.randn(2000, 2, generator=g), S, steps=3, generator=g)
    assert energy_distance(x, ref) > 0.1


def test_eps_fn_sees_timesteps_not_loop_positions():
    seen = []
    def spy(x, t):
        seen.append(t[0].item())
        return torch.zeros_like(x)
    sample(spy, torch.randn(4, 2), S, steps=10)
    assert seen == timestep_sequence(1000, 10).tolist()
    assert seen[0] == 999 and seen[-1] == 0 and seen[1] == 888


def test_ddim_step_uses_abar_of_the_timestep():
    """One DDIM step from t=999 to t=888, computed by hand from abar[999] and abar[888]."""
    x, eps = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    a_t, a_s = S.abar[999], S.abar[888]
    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    expected = a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps
    got, _ = ddim_step(S, x, torch.full((3,), 999), 888, eps)
    torch.testing.assert_close(got, expected)


def test_ddim_eta1_equals_ddpm_step():
    x, eps = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    t = torch.full((5,), 700)
    a, _ = ddim_step(S, x, t, 650, eps, eta=1.0, generator=torch.Generator().manual_seed(3))
    b, _ = ddpm_step(S, x, t, 650, eps, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)


def test_seeded_sampling_is_reproducible_and_seed_sensitive():
    run = lambda seed, method: sample(TOY.eps_fn(S), torch.randn(16, 2, generator=torch.Generator().manual_seed(seed)),
                                      S, steps=20, method=method, generator=torch.Generator().manual_seed(seed))
    for method in ("ddpm", "ddim"):
        assert torch.equal(run(1, method), run(1, method))
        assert not torch.equal(run(1, method), run(2, method))


def test_callback_and_progressive_steps():
    steps = []
    out = sample(TOY.eps_fn(S), torch.randn(8, 2), S, steps=5, callback=steps.append)
    assert [s.index for s in steps] == list(range(5)) and torch.equal(steps[-1].x_next, out)
    assert all(s.x0_hat.shape == (8, 2) for s in steps)
    assert len(list(sample_steps(TOY.eps_fn(S), torch.randn(8, 2), S, steps=7))) == 7


def test_final_ddim_step_returns_x0_hat():
    x, eps = torch.randn(2, 2), torch.randn(2, 2)
    x_prev, x0 = ddim_step(S, x, torch.tensor([0, 0]), -1, eps)
    torch.testing.assert_close(x_prev, x0)


@pytest.mark.parametrize("kwargs, msg", [
    ({"steps": 1001}, "1 to T=1000"), ({"steps": 0}, "1 to T"), ({"steps": 2.5}, "integer"),
    ({"method": "rk4"}, "ddim"), ({"eta": 2.0}, "eta"), ({"method": "euler"}, "needs steps="),
    ({"method": "heun", "steps": 5, "eta": 0.5}, "no callback and no eta"),
])
def test_bad_sampler_arguments(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        sample(TOY.eps_fn(S), torch.randn(2, 2), S, **kwargs)


def test_eps_fn_with_wrong_shape_is_reported():
    with pytest.raises(ValueError, match="eps-function returned shape"):
        sample(lambda x, t: x[:, :1], torch.randn(2, 2), S, steps=2)


def test_x_T_must_be_float_batch():
    with pytest.raises(ValueError, match="x_T"):
        sample(TOY.eps_fn(S), torch.zeros(4, 2, dtype=torch.long), S)
