import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lessonlib.schedules import NoiseSchedule, cosine_schedule, linear_schedule, make_schedule


@settings(max_examples=30, deadline=None)
@given(T=st.integers(1, 2000), kind=st.sampled_from(["linear", "cosine"]))
def test_schedule_monotone_and_bounded(T, kind):
    s = make_schedule(kind, T)
    assert s.T == T
    assert torch.all((s.betas > 0) & (s.betas < 1))
    assert torch.all(s.abar[1:] < s.abar[:-1])  # strictly less signal at every step
    assert torch.all((s.abar > 0) & (s.abar < 1))
    assert s.abar_prev[0] == 1 and torch.equal(s.abar_prev[1:], s.abar[:-1])
    torch.testing.assert_close(s.abar, torch.cumprod(1 - s.betas, 0))


def test_linear_matches_ddpm_at_T1000():
    s = linear_schedule(1000)
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    assert s.abar[-1].item() < 1e-4  # x_T is almost pure noise


def test_cosine_follows_its_formula():
    s = cosine_schedule(1000)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    for t in [0, 100, 500, 900]:
        assert s.abar[t].item() == pytest.approx(f((t + 1) / 1000) / f(0), rel=1e-6)


@pytest.mark.parametrize("T", [0, -3, 2.5, True, "10"])
def test_bad_T(T):
    with pytest.raises(ValueError, match="T"):
        linear_schedule(T)


@pytest.mark.parametrize("betas", [[0.1, 1.0], [0.0, 0.1], [-0.1], [0.2, float("nan")], []])
def test_betas_outside_unit_interval(betas):
    with pytest.raises(ValueError, match="beta|T >= 1"):
        NoiseSchedule(torch.tensor(betas))


def test_unknown_schedule_name():
    with pytest.raises(ValueError, match="linear"):
        make_schedule("quadratic")


def test_at_gathers_by_timestep_and_broadcasts():
    s = linear_schedule(100)
    x = torch.zeros(3, 1, 4, 4)
    a = s.at("abar", torch.tensor([0, 50, 99]), x)
    assert a.shape == (3, 1, 1, 1) and a.dtype == x.dtype
    torch.testing.assert_close(a.flatten(), s.abar[[0, 50, 99]].float())


@pytest.mark.parametrize("t, msg", [
    (torch.tensor([1.0, 2.0]), "integers"),
    (torch.tensor([0, 100]), "0..99"),
    (torch.tensor([-1, 3]), "0..99"),
    (torch.tensor([[1, 2]]), "shape"),
    (torch.tensor([1, 2, 3]), "batch"),
])
def test_bad_timesteps(t, msg):
    with pytest.raises(ValueError, match=msg):
        linear_schedule(100).at("abar", t, torch.zeros(2, 2))


def test_at_refuses_unknown_tables():
    with pytest.raises(ValueError, match="choose one of.*abar"):
        linear_schedule(10).at("alpha_bar", torch.tensor([1]), torch.zeros(1, 2))
