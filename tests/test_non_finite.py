"""NaN and infinity are refused where they enter, and a model that produces them stops the sampler by name."""
import pytest
import torch

from lessonlib.flow import LINEAR, ode_sample
from lessonlib.guidance import batched_cfg, conditional, noisy_clip_grad
from lessonlib.samplers import sample, sample_images
from lessonlib.schedules import linear_schedule, timestep_sequence
from lessonlib.types import check_finite

SCHEDULE = linear_schedule(50)


def _with_nan(n_bad=3):
    x = torch.randn(2, 1, 4, 4)
    x.view(-1)[:n_bad] = float("nan")
    return x


@pytest.mark.parametrize("entry", ["sample", "sample_images", "ode_sample"])
def test_non_finite_starting_noise_is_refused_with_its_count(entry):
    calls = []
    eps = lambda x, t: calls.append(1) or torch.zeros_like(x)
    run = {"sample": lambda x: sample(eps, x, SCHEDULE, steps=5, progress=False),
           "sample_images": lambda x: sample_images(eps, x, SCHEDULE, steps=5),
           "ode_sample": lambda x: ode_sample(eps, x, LINEAR, steps=5)}[entry]
    with pytest.raises(ValueError, match=r"x_T has 3 non-finite value\(s\)"):
        run(_with_nan(3))
    x = torch.randn(2, 1, 4, 4)
    x[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="x_T has 1 non-finite"):
        run(x)
    assert not calls  # refused before the model ran


def test_a_model_that_returns_nan_mid_run_stops_at_that_step_and_t():
    def eps(x, t):
        out = torch.zeros_like(x)
        if int(t[0]) < 25:
            out[0, 0, 0, 0] = float("nan")
        return out

    ts = timestep_sequence(SCHEDULE.T, 10).tolist()
    first = next(i for i, t in enumerate(ts) if t < 25)
    with pytest.raises(FloatingPointError, match=rf"returned 1 non-finite value\(s\).* at step {first} \(t = {ts[first]}\)"):
        sample(eps, torch.randn(2, 1, 4, 4), SCHEDULE, steps=10, progress=False)


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_a_velocity_that_turns_infinite_stops_the_ode_by_step(method):
    v = lambda x, t: torch.where(t.reshape(-1, 1, 1, 1) < 0.5, torch.full_like(x, float("inf")), -x)
    with pytest.raises(FloatingPointError, match=r"at step \d \(t = 0\.[0-4]"):
        ode_sample(v, torch.randn(2, 1, 4, 4), LINEAR, steps=5, method=method)


def test_non_finite_conditions_are_refused_when_bound():
    model = lambda x, t, c: torch.zeros_like(x)
    emb = torch.randn(2, 8)
    emb[1, 3] = float("nan")
    with pytest.raises(ValueError, match=r"the condition has 1 non-finite"):
        conditional(model, emb)
    with pytest.raises(ValueError, match=r"the conditions\[1\]\['text'\] has 1 non-finite"):
        batched_cfg(model, {"text": emb}, {"text": torch.zeros(2, 8)}, 3.0)
    with pytest.raises(ValueError, match="text_emb has 1 non-finite"):
        noisy_clip_grad(lambda x, t: x.flatten(1)[:, :8], emb)
    assert conditional(model, torch.tensor([3, 4])) is not None  # labels pass


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_guidance_scales_are_refused(scale):
    with pytest.raises(ValueError, match="must be finite"):
        batched_cfg(lambda x, t, c: x, torch.tensor([1]), -1, scale)


def test_check_finite_passes_finite_values_through():
    x = {"a": torch.ones(3), "b": [torch.zeros(2), None, "text"], "labels": torch.tensor([1, 2])}
    assert check_finite(x, "x") is x
