"""Flow matching on the linear path: conversions, the exact toy velocity, Euler/Heun, DDIM = Euler (lesson 12)."""
import pytest
import torch
from helpers import loss_before_after
from hypothesis import given, settings
from hypothesis import strategies as st

from lessonlib import flow
from lessonlib.guidance import cfg
from lessonlib.metrics import energy_distance
from lessonlib.samplers import sample, sample_images
from lessonlib.schedules import cosine_schedule, linear_schedule, signal_noise
from lessonlib.toy import GaussianMixture2D

TOY, S = GaussianMixture2D(), linear_schedule(1000)


@settings(max_examples=40, deadline=None)
@given(t=st.floats(0.01, 0.99), seed=st.integers(0, 2**16))
def test_conversions_round_trip(t, seed):
    g = torch.Generator().manual_seed(seed)
    x0, eps = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    x_t = flow.interpolate(x0, eps, t)
    v = flow.velocity_target(x0, eps)
    torch.testing.assert_close(flow.x0_from_velocity(x_t, t, v), x0)
    torch.testing.assert_close(flow.eps_from_velocity(x_t, t, v), eps)
    torch.testing.assert_close(flow.velocity_from_eps(x_t, t, eps), v)
    torch.testing.assert_close(flow.score_from_velocity(x_t, t, v), -eps / t)


def test_exact_toy_velocity_matches_autograd_of_the_exact_log_density():
    """v from Gaussian conditioning (no score) equals v converted from grad log p_t of the linear path."""
    x = 2 * torch.randn(200, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v_fn = TOY.velocity_fn()
    for t in (0.05, 0.3, 0.7, 0.95):
        tt = torch.full((200,), t, dtype=torch.float64)
        abar, r = TOY.linear_to_vp(tt)
        xx = x.clone().requires_grad_(True)
        # p_lin(x) = p_vp(x / r) / r^2: the linear-path density is the DDPM one at the same SNR, rescaled
        score, = torch.autograd.grad(TOY.log_prob(xx / r[:, None], abar).sum(), xx)
        v_from_density = flow.velocity_from_eps(x, tt, -t * score)
        torch.testing.assert_close(v_fn(x, tt), v_from_density, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("method, steps, bound", [("euler", 100, 0.01), ("heun", 10, 0.01)])
def test_ode_with_the_exact_field_reproduces_the_toy(method, steps, bound):
    g = torch.Generator().manual_seed(1)
    ref, _ = TOY.sample(3000, generator=g)
    floor = abs(energy_distance(TOY.sample(3000, generator=g)[0], ref))
    xs = flow.ode_sample(TOY.velocity_fn(), torch.randn(3000, 2, generator=g), flow.LINEAR, steps=steps, method=method)
    assert energy_distance(xs, ref) < bound + floor


def test_heun_beats_euler_at_few_steps_on_the_exact_field():
    g = torch.Generator().manual_seed(2)
    ref, _ = TOY.sample(3000, generator=g)
    noise = torch.randn(3000, 2, generator=g)
    d = {m: energy_distance(flow.ode_sample(TOY.velocity_fn(), noise, flow.LINEAR, steps=4, method=m), ref)
         for m in flow.ODE_METHODS}
    assert d["heun"] < d["euler"] / 3, d


@pytest.mark.parametrize("schedule", [S, cosine_schedule(1000)])
@pytest.mark.parametrize("steps", [1, 7, 50])
def test_ddim_is_euler_in_linear_path_coordinates(schedule, steps):
    """DDIM (eta = 0) on an eps-model and Euler on the same model read as a linear-path velocity: equal."""
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ddim = sample(TOY.eps_fn(schedule), x_T, schedule, steps=steps, progress=False)
    euler = flow.ode_sample(TOY.eps_fn(schedule), x_T, schedule, steps=steps, method="euler")
    assert float((ddim - euler).abs().max()) < 1e-10


def test_ddim_is_euler_with_clipping_too_and_sample_images_runs_both():
    x_T = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    eps_fn = lambda x, t: 3 * x  # noqa: E731  (pushes x0_hat outside [-1, 1], so clipping matters)
    ddim = sample_images(eps_fn, x_T, S, steps=5)
    euler = sample_images(eps_fn, x_T, S, steps=5, method="euler")
    unclipped = sample_images(eps_fn, x_T, S, steps=5, method="euler", clip_x0=False)
    torch.testing.assert_close(ddim, euler, rtol=0, atol=1e-5)
    assert (euler - unclipped).abs().max() > 1e-3


def test_guidance_on_velocities_equals_guidance_on_the_eps_they_convert_to():
    g = torch.Generator().manual_seed(5)
    x, t = torch.randn(8, 2, generator=g, dtype=torch.float64), torch.full((8,), 0.4, dtype=torch.float64)
    v_c = lambda x, t: torch.sin(x) + t.reshape(-1, 1)  # noqa: E731
    v_u = lambda x, t: 0.5 * x                          # noqa: E731
    for s in (0.0, 1.0, 3.5):
        via_v = flow.eps_from_velocity(x, t, cfg(v_c, v_u, s)(x, t))
        as_eps = lambda fn: (lambda x, t: flow.eps_from_velocity(x, t, fn(x, t)))  # noqa: E731
        via_eps = cfg(as_eps(v_c), as_eps(v_u), s)(x, t)
        torch.testing.assert_close(via_v, via_eps)


@pytest.mark.parametrize("call, message", [
    (lambda: flow.interpolate(torch.zeros(2, 2), torch.zeros(2, 2), 1.5), r"\[0, 1\]"),
    (lambda: flow.interpolate(torch.zeros(2, 2), torch.zeros(2, 2), torch.tensor([500, 500])), "integer timesteps"),
    (lambda: flow.velocity_from_eps(torch.zeros(2, 2), 1.0, torch.zeros(2, 2)), "t < 1"),
    (lambda: flow.score_from_velocity(torch.zeros(2, 2), 0.0, torch.zeros(2, 2)), "t > 0"),
    (lambda: flow.ode_sample(TOY.velocity_fn(), torch.zeros(2, 2), flow.LINEAR, steps=0), "steps must be"),
    (lambda: flow.ode_sample(TOY.velocity_fn(), torch.zeros(2, 2), flow.LINEAR, steps=3, method="rk4"), "euler"),
    (lambda: flow.ode_sample(TOY.velocity_fn(), torch.zeros(2, 2), "linear", steps=3), "flow.LINEAR"),
    (lambda: sample(TOY.velocity_fn(), torch.zeros(2, 2), flow.LINEAR, steps=3), "NoiseSchedule"),
])
def test_bad_input_gets_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_a_velocity_unet_takes_unit_times_and_refuses_integer_timesteps():
    from lessonlib.nets.unet import UNet

    net = UNet(base_channels=8, channel_mults=(1, 2), groups=4, num_classes=10, prediction="velocity")
    x, y = torch.randn(2, 1, 28, 28), torch.tensor([3, 4])
    assert net(x, torch.tensor([0.0, 1.0]), y).shape == x.shape
    with pytest.raises(ValueError, match="method='euler' or 'heun'"):
        net(x, torch.tensor([500, 500]), y)            # what a DDIM/DDPM sampler would give it
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        net(x, torch.tensor([0.5, 1.5]), y)
    with pytest.raises(ValueError, match="prediction must be one of"):
        UNet(base_channels=8, channel_mults=(1, 2), groups=4, prediction="x0")
    with pytest.raises(ValueError, match="NoiseSchedule"):
        sample_images(lambda x, t: net(x, t, y), torch.randn(2, 1, 28, 28), flow.LINEAR, steps=2)


def test_flow_loss_trains_a_velocity_model_towards_the_target():
    from lessonlib.nets.unet import UNet
    from lessonlib.training import flow_loss_fn

    g = torch.Generator().manual_seed(0)
    images = torch.rand(64, 1, 28, 28, generator=g) * 2 - 1
    labels = torch.arange(64) % 10
    net = UNet(base_channels=8, channel_mults=(1, 2), groups=4, num_classes=10, prediction="velocity")
    loss = flow_loss_fn(images, labels, batch_size=16, p_uncond=0.1, generator=g)
    first, last = loss_before_after(net, loss, steps=60, lr=3e-3, warmup=10)
    assert last < 0.8 * first, (first, last)
    with pytest.raises(ValueError, match="time_sampling"):
        flow_loss_fn(images, labels, batch_size=16, p_uncond=0.1, generator=g, time_sampling="beta")


def test_flow_recipes_train_on_the_linear_path_only():
    from dataclasses import replace

    from lessonlib.recipes import RECIPES

    assert RECIPES["mnist-flow-cfg"].noise_schedule() is flow.LINEAR
    with pytest.raises(ValueError, match="linear-flow"):
        replace(RECIPES["mnist-flow-cfg"], schedule="linear")
    with pytest.raises(ValueError, match="linear-flow"):
        replace(RECIPES["mnist-cfg"], schedule="linear-flow")


def test_straightness_is_one_on_a_line_and_measures_a_bend():
    line = torch.linspace(0, 1, 11).reshape(11, 1, 1) * torch.tensor([[[3.0, 4.0]]])
    corner = torch.tensor([[[0.0, 0.0]], [[1.0, 0.0]], [[1.0, 1.0]]])
    torch.testing.assert_close(flow.straightness(line), torch.ones(1))
    torch.testing.assert_close(flow.straightness(corner), torch.tensor([2**0.5 / 2]))
    with pytest.raises(ValueError, match="at least two states"):
        flow.straightness(torch.zeros(1, 3, 2))


def test_trajectories_end_where_the_sampler_ends_and_a_training_pair_runs_straight_only_on_the_linear_path():
    noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    path = flow.ode_sample(TOY.velocity_fn(), noise, flow.LINEAR, steps=50, trajectory=True)
    assert path.shape == (51, 256, 2)
    torch.testing.assert_close(path[-1], flow.ode_sample(TOY.velocity_fn(), noise, flow.LINEAR, steps=50))
    via_eps = flow.ode_sample(TOY.eps_fn(S), noise, S, steps=50, trajectory=True)  # DDIM states, rescaled
    assert via_eps.shape == path.shape and float((via_eps[-1] - path[-1]).norm(dim=1).median()) < 0.05  # one ODE
    ks = flow.timestep_sequence(S.T, 50).tolist() + [-1]
    a, s = (torch.tensor([signal_noise(S, int(k))[i] for k in ks], dtype=torch.float64).reshape(-1, 1, 1)
            for i in (0, 1))
    x0, eps = TOY.sample(256, generator=torch.Generator().manual_seed(3))[0].double(), noise
    conditional_vp = a * x0 + s * eps                       # one training pair's path under the DDPM schedule
    torch.testing.assert_close(flow.straightness(conditional_vp / (a + s)), torch.ones(256, dtype=torch.float64))
    assert float(flow.straightness(conditional_vp).median()) < 0.95  # an arc: a x0 + s eps with a^2 + s^2 = 1


def test_cfg_zero_star_is_cfg_at_its_neutral_setting_and_does_what_it_says():
    from lessonlib.guidance import batched_cfg
    from lessonlib.variants import cfg_zero_star, optimized_scale

    def model(x, t, y):  # a toy conditional velocity model; y = -1 is the null class
        return torch.sin(x + y.reshape(-1, 1).float()) + t.reshape(-1, 1) * x

    x, y, null = torch.randn(6, 2, generator=torch.Generator().manual_seed(0)), torch.arange(6) % 3, torch.full((6,), -1)
    t = torch.full((6,), 0.7)
    for s in (0.0, 1.0, 4.0):
        assert torch.equal(cfg_zero_star(model, y, null, s, optimized=False)(x, t), batched_cfg(model, y, null, s)(x, t))
    c = model(x, t, y)
    torch.testing.assert_close(optimized_scale(2.5 * c, c), torch.full((6, 1), 2.5))
    parallel = lambda x, t, y: (1 - 0.5 * (y < 0).float()).reshape(-1, 1) * (torch.sin(x) + 1)  # noqa: E731 c = 2u
    torch.testing.assert_close(cfg_zero_star(parallel, y, null, 7.0)(x, t), torch.sin(x) + 1)  # nothing to guide
    zeroed = cfg_zero_star(model, y, null, 3.0, zero_init=0.2)
    assert torch.equal(zeroed(x, torch.full((6,), 0.9)), torch.zeros(6, 2))
    assert torch.equal(zeroed(x, t), cfg_zero_star(model, y, null, 3.0)(x, t))
    with pytest.raises(ValueError, match="needs a velocity model"):
        zeroed(x, torch.full((6,), 900))
    with pytest.raises(ValueError, match=r"zero_init must lie in \[0, 1\)"):
        cfg_zero_star(model, y, null, 3.0, zero_init=1.0)


def test_a_small_flow_model_learns_the_toy_velocity():
    from lessonlib.training import fit_toy_flow_model

    model, losses = fit_toy_flow_model(TOY, steps=400, progress=False)
    g = torch.Generator().manual_seed(1)
    x0, _ = TOY.sample(2000, generator=g)
    t = torch.full((2000,), 0.5)
    x_t = flow.interpolate(x0, torch.randn(x0.shape, generator=g), t)
    with torch.no_grad():
        exact, learned = TOY.velocity_fn()(x_t, t), model(x_t, t)
    rel = float((learned - exact).pow(2).sum(1).mean() / exact.pow(2).sum(1).mean())
    assert rel < 0.1 and sum(losses[-50:]) < sum(losses[:50])
    with pytest.raises(ValueError, match="integer timesteps"):
        model(x_t, torch.full((2000,), 500))


def test_explicit_grids_reproduce_the_default_ones_and_heun_works_on_an_eps_model():
    from lessonlib.schedules import timestep_sequence

    noise = torch.randn(500, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    even = flow.ode_sample(TOY.velocity_fn(), noise, flow.LINEAR, grid=torch.linspace(1, 0, 9, dtype=torch.float64)[:-1])
    torch.testing.assert_close(even, flow.ode_sample(TOY.velocity_fn(), noise, flow.LINEAR, steps=8))
    ddim = flow.ode_sample(TOY.eps_fn(S), noise, S, grid=timestep_sequence(S.T, 6))
    torch.testing.assert_close(ddim, flow.ode_sample(TOY.eps_fn(S), noise, S, steps=6))
    ks = flow.nearest_timesteps(S, torch.linspace(1, 0, 9, dtype=torch.float64)[:-1])
    assert ks == sorted(set(ks), reverse=True) and len(ks) == 8 and ks[0] == S.T - 1
    real, _ = TOY.sample(500, generator=torch.Generator().manual_seed(5))
    floor = abs(energy_distance(real, TOY.sample(500, generator=torch.Generator().manual_seed(6))[0]))
    heun = flow.ode_sample(TOY.eps_fn(S), noise, S, grid=ks, method="heun")
    assert energy_distance(heun.float(), real) < floor + 0.02
    with pytest.raises(ValueError, match="strictly descending"):
        flow.ode_sample(TOY.velocity_fn(), noise, flow.LINEAR, grid=[0.5, 0.7])
    with pytest.raises(ValueError, match="integer timesteps"):
        flow.ode_sample(TOY.eps_fn(S), noise, S, grid=[0.9, 0.5])
    with pytest.raises(ValueError, match="steps=3 but the grid"):
        flow.ode_sample(TOY.velocity_fn(), noise, flow.LINEAR, steps=3, grid=[0.9, 0.5])
    with pytest.raises(ValueError, match="distinct timesteps"):
        flow.nearest_timesteps(S, [0.9999, 0.99999])
