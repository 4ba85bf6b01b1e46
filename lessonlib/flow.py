"""Flow matching on the course's abstraction: the linear path, velocity predictions, ODE samplers (lesson 12).

The linear (rectified-flow) path joins data and noise in time t in [0, 1] (0: data, 1: noise):

    x_t = (1 - t) x0 + t eps,        velocity v = dx_t/dt = eps - x0.

A *velocity function* ``v_fn(x_t, t) -> v`` takes float times in [0, 1]. For this path every prediction
determines the others (given x_t and t):

    x0 = x_t - t v,     eps = x_t + (1 - t) v,     score = grad log p_t(x_t) = -eps / t.

Guidance carries over unchanged: eps is an affine function of v whose coefficients do not depend on the
model, so ``cfg`` on two velocity predictions equals ``cfg`` on the two eps they convert to (tested).

An eps-model trained on a DDPM schedule (x = a x0 + s eps, a = sqrt(abar_k), s = sqrt(1 - abar_k)) lives on
the same family of straight lines: dividing by a + s gives x / (a + s) = (1 - t) x0 + t eps with
t = s / (a + s). :func:`velocity_view` turns an eps-model into a velocity function on that grid of times,
and in these coordinates DDIM (eta = 0) is exactly Euler's method (lesson 12 checks it numerically).

:func:`ode_sample` runs Euler or Heun for both kinds of model: a velocity function with ``LINEAR``, or an
eps-function with its :class:`~lessonlib.schedules.NoiseSchedule`. ``samplers.sample_images`` calls it for
``method="euler"`` and ``method="heun"``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .schedules import NoiseSchedule, make_schedule, signal_noise, timestep_sequence
from .types import EpsFn, check_finite, check_step

__all__ = ["LinearPath", "LINEAR", "VelocityFn", "check_unit_time", "interpolate", "velocity_target",
           "x0_from_velocity", "eps_from_velocity", "velocity_from_eps", "score_from_velocity", "linear_times",
           "velocity_view", "ode_sample", "ODE_METHODS", "make_path", "unit_times", "flow_matching_loss",
           "straightness", "TIME_SAMPLINGS", "nearest_timesteps"]

VelocityFn = Callable[[Tensor, Tensor], Tensor]  # (x_t, t in [0, 1]) -> velocity
ODE_METHODS = ("euler", "heun")
TIME_SAMPLINGS = ("logit-normal", "uniform")


@dataclass(frozen=True)
class LinearPath:
    """The rectified-flow path x_t = (1 - t) x0 + t eps, t in [0, 1]; use the instance :data:`LINEAR`."""

    name: str = "linear-flow"

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t

    def sigma(self, t: Tensor) -> Tensor:
        return t


LINEAR = LinearPath()


def make_path(name: str = "linear", T: int = 1000) -> NoiseSchedule | LinearPath:
    """A recipe's noise process by name: ``"linear-flow"`` is :data:`LINEAR`, other names DDPM schedules."""
    return LINEAR if name == LINEAR.name else make_schedule(name, T)


def check_unit_time(t, like: Tensor) -> Tensor:
    """Float times in [0, 1] (a number or one per image), shaped to broadcast against ``like``."""
    t = torch.as_tensor(t)
    if not t.dtype.is_floating_point:
        raise ValueError(f"flow times are floats in [0, 1] (0: data, 1: noise), got dtype {t.dtype}; integer "
                         "timesteps belong to DDPM schedules (convert an eps-model with flow.velocity_view).")
    if t.numel() and (float(t.min()) < 0 or float(t.max()) > 1):
        raise ValueError(f"flow times must lie in [0, 1], got values from {float(t.min()):g} to {float(t.max()):g}.")
    if t.ndim > 1 or t.numel() not in (1, like.shape[0]):
        raise ValueError(f"give one time or one per image ({like.shape[0]}), got shape {tuple(t.shape)}.")
    return t.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def interpolate(x0: Tensor, eps: Tensor, t) -> Tensor:
    """x_t = (1 - t) x0 + t eps on the linear path."""
    t = check_unit_time(t, x0)
    return (1 - t) * x0 + t * eps


def velocity_target(x0: Tensor, eps: Tensor) -> Tensor:
    """The regression target of flow matching on the linear path: v = eps - x0."""
    return eps - x0


def unit_times(n: int, *, generator: torch.Generator | None = None, sampling: str = "logit-normal") -> Tensor:
    """n training times in (0, 1): logit-normal (sigmoid of a standard normal, Stable Diffusion 3's choice, more
    weight on the middle of the path) or uniform."""
    if sampling not in TIME_SAMPLINGS:
        raise ValueError(f"time sampling must be one of {TIME_SAMPLINGS}, got {sampling!r}.")
    if sampling == "logit-normal":
        return torch.sigmoid(torch.randn(n, generator=generator))
    return torch.rand(n, generator=generator)


def flow_matching_loss(v_fn: VelocityFn, x0: Tensor, *, generator: torch.Generator | None = None,
                       sampling: str = "logit-normal") -> Tensor:
    """Conditional flow matching on the linear path: mean || v_fn(x_t, t) - (eps - x0) ||^2 (lesson 12).

    Its minimiser is the marginal velocity E[eps - x0 | x_t], as the denoising loss's is E[eps | x_t].
    """
    eps = torch.randn(x0.shape, generator=generator)
    t = unit_times(len(x0), generator=generator, sampling=sampling)
    return (v_fn(interpolate(x0, eps, t), t) - velocity_target(x0, eps)).pow(2).mean()


def x0_from_velocity(x_t: Tensor, t, v: Tensor) -> Tensor:
    return x_t - check_unit_time(t, x_t) * v


def eps_from_velocity(x_t: Tensor, t, v: Tensor) -> Tensor:
    return x_t + (1 - check_unit_time(t, x_t)) * v


def velocity_from_eps(x_t: Tensor, t, eps: Tensor) -> Tensor:
    """v = (eps - x_t) / (1 - t); undefined at t = 1, where x_t is pure noise and carries no x0."""
    t = check_unit_time(t, x_t)
    if torch.any(t >= 1):
        raise ValueError("velocity_from_eps needs t < 1: at t = 1 the noise prediction says nothing about x0.")
    return (eps - x_t) / (1 - t)


def score_from_velocity(x_t: Tensor, t, v: Tensor) -> Tensor:
    """grad log p_t(x_t) = -eps / t; undefined at t = 0 (the data distribution has no smooth score)."""
    tt = check_unit_time(t, x_t)
    if torch.any(tt <= 0):
        raise ValueError("score_from_velocity needs t > 0.")
    return -eps_from_velocity(x_t, t, v) / tt


def linear_times(schedule: NoiseSchedule, timesteps) -> Tensor:
    """Linear-path times t = s / (a + s) of integer DDPM timesteps (-1: the clean image, t = 0), float64."""
    return torch.tensor([(lambda a, s: s / (a + s))(*signal_noise(schedule, int(k))) for k in timesteps],
                        dtype=torch.float64)


def nearest_timesteps(schedule: NoiseSchedule, times) -> list[int]:
    """The DDPM timesteps whose linear-path times are nearest to ``times`` (descending, distinct): a grid chosen in
    t for an eps-model (lesson 12)."""
    times = torch.as_tensor(times, dtype=torch.float64).reshape(-1)
    if len(times) == 0 or float(times.min()) <= 0 or float(times.max()) > 1:
        raise ValueError("give one or more times in (0, 1]; the final step to t = 0 is added by the sampler.")
    all_t = linear_times(schedule, range(schedule.T))
    ks = sorted({int((all_t - t).abs().argmin()) for t in times.tolist()}, reverse=True)
    if len(ks) < len(times):
        raise ValueError(f"{len(times)} times map to only {len(ks)} distinct timesteps; use fewer, coarser times.")
    return ks


def velocity_view(eps_fn: EpsFn, schedule: NoiseSchedule, *, clip_x0: bool = False) -> Callable[[Tensor, int], Tensor]:
    """An eps-model on a DDPM schedule as a velocity on the linear path: ``v(x_lin, k)`` at integer timestep k.

    x = (a + s) x_lin is the model's input; v = eps - x0 with x0 = (x - s eps) / a (clipped to [-1, 1] with
    ``clip_x0``, the eps recomputed from it, as DDIM does).
    """
    def velocity(x_lin: Tensor, k: int) -> Tensor:
        a, s = signal_noise(schedule, k)
        x = (a + s) * x_lin
        eps = eps_fn(x, torch.full((x.shape[0],), k, dtype=torch.long, device=x.device))
        x0 = (x - s * eps) / a
        if clip_x0:
            x0 = x0.clamp(-1, 1)
            eps = (x - a * x0) / s
        return eps - x0
    return velocity


def _clipped_velocity(v_fn: VelocityFn) -> VelocityFn:
    def velocity(x: Tensor, t: Tensor) -> Tensor:
        v = v_fn(x, t)
        tt = check_unit_time(t, x)
        x0 = (x - tt * v).clamp(-1, 1)
        return (x - x0) / tt - x0  # eps - x0 with eps recomputed from the clipped x0 (t > 0 on every grid point)
    return velocity


def straightness(path: Tensor) -> Tensor:
    """Per trajectory: chord over arc length, |x_end - x_start| / sum_i |x_(i+1) - x_i|; 1 is a straight line.

    ``path`` is (steps + 1, B, ...) as returned by ``ode_sample(..., trajectory=True)`` (lesson 12).
    """
    if path.ndim < 3 or len(path) < 2:
        raise ValueError(f"give a trajectory (steps + 1, B, ...) with at least two states, got {tuple(path.shape)}.")
    flat = path.flatten(2)
    arc = (flat[1:] - flat[:-1]).norm(dim=2).sum(0)
    return (flat[-1] - flat[0]).norm(dim=1) / arc.clamp_min(1e-12)


@torch.no_grad()
def ode_sample(fn, x_T: Tensor, schedule: NoiseSchedule | LinearPath, *, steps: int | None = None,
               method: str = "euler", clip_x0: bool = False, trajectory: bool = False, grid=None) -> Tensor:
    """Integrate the probability-flow ODE from noise (t = 1) to data (t = 0) with Euler or Heun (lesson 12).

    ``fn`` is a velocity function with ``schedule=LINEAR`` (times evenly spaced from 1 to 0), or an eps-function
    with its NoiseSchedule (the DDIM grid of ``steps`` timesteps, read through :func:`velocity_view`; the result
    then equals DDIM with eta = 0 for Euler). Heun's correction is skipped on the last step, into t = 0, where
    the model is not defined. Returns the clean sample (x at t = 0). Costs ``steps`` (Euler) or ``2 steps - 1``
    (Heun) model calls. ``trajectory=True`` returns every state instead, (steps + 1, B, ...), in linear-path
    coordinates (for an eps-model: x / (a + s), the DDIM states rescaled).

    ``grid`` replaces the default grid: descending times in (0, 1] for ``LINEAR``, descending integer timesteps
    for a NoiseSchedule (e.g. from :func:`nearest_timesteps`); the final step to t = 0 is added. The default
    grid for an eps-model is DDIM's, which ends with timestep 0 (t of about 0.01) before the clean image.
    """
    if method not in ODE_METHODS:
        raise ValueError(f"unknown ODE method {method!r}; choose one of {ODE_METHODS}.")
    check_finite(x_T, "x_T")
    if grid is not None:
        grid = torch.as_tensor(grid).reshape(-1)
        if steps is not None and steps != len(grid):
            raise ValueError(f"steps={steps} but the grid has {len(grid)} points; give one of them.")
        if len(grid) == 0 or torch.any(grid[1:] >= grid[:-1]):
            raise ValueError("a grid must be non-empty and strictly descending (from noise towards data).")
        steps = len(grid)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}.")
    if isinstance(schedule, LinearPath):
        if grid is None:
            times = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
        else:
            if not grid.dtype.is_floating_point or float(grid[0]) > 1 or float(grid[-1]) <= 0:
                raise ValueError("a flow grid holds float times in (0, 1], descending; t = 0 is added.")
            times = torch.cat([grid.double(), torch.zeros(1, dtype=torch.float64)])
        v_fn = _clipped_velocity(fn) if clip_x0 else fn
        keys = [torch.full((x_T.shape[0],), float(t), dtype=x_T.dtype, device=x_T.device) for t in times]
        x = x_T
    elif isinstance(schedule, NoiseSchedule):
        if grid is not None and (grid.dtype.is_floating_point or int(grid[0]) > schedule.T - 1 or int(grid[-1]) < 0):
            raise ValueError(f"an eps-model's grid holds integer timesteps from {schedule.T - 1} down to 0.")
        ks = (timestep_sequence(schedule.T, steps) if grid is None else grid).tolist() + [-1]
        times, keys = linear_times(schedule, ks), ks
        v_fn = velocity_view(fn, schedule, clip_x0=clip_x0)
        a, s = signal_noise(schedule, ks[0])
        x = x_T / (a + s)  # the starting noise, read as x at the first timestep, in linear-path coordinates
    else:
        raise ValueError(f"schedule must be flow.LINEAR (a velocity model) or a NoiseSchedule (an eps-model), "
                         f"got {type(schedule).__name__}.")
    states = [x]
    for i in range(len(times) - 1):
        dt = float(times[i + 1] - times[i])
        v = check_step(v_fn(x, keys[i]), i, float(times[i]), "the model")
        x_next = x + dt * v
        if method == "heun" and i + 1 < len(times) - 1:
            x_next = x + dt * (v + check_step(v_fn(x_next, keys[i + 1]), i, float(times[i + 1]), "the model")) / 2
        x = x_next
        states.append(x)
    return torch.stack(states) if trajectory else x
