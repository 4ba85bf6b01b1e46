"""Samplers: DDPM (ancestral) and DDIM steps, and one loop over any eps-function (lessons 01-02).

A sampler consumes an :data:`~lessonlib.types.EpsFn` ``(x_t, t) -> eps_hat`` and never
knows which model or guidance is inside it. Steps run over a strided, descending timestep
subsequence t_1 > t_2 > ... > t_K and finish at "t = -1", the clean image (abar = 1).

DDIM step from t to s (Song et al. 2021, eq. 12), with a_t = abar_t and a_s = abar_s:

    x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)
    sigma  = eta * sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))
    x_s    = sqrt(a_s) x0_hat + sqrt(1 - a_s - sigma^2) eps + sigma z

DDPM ancestral step (Ho et al. 2020, Algorithm 2): x_s ~ q(x_s | x_t, x0_hat), the posterior of
:func:`lessonlib.diffusion.posterior_mean_variance`. It equals DDIM with eta = 1.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from .diffusion import abar_at_prev, eps_from_x0, posterior_mean_variance, step_timesteps, x0_from_eps
from .flow import ODE_METHODS, ode_sample
from .progress import progress_bar
from .schedules import NoiseSchedule, timestep_sequence
from .types import EpsFn, check_finite, check_step

__all__ = ["Step", "timestep_sequence", "ddim_step", "ddpm_step", "sample", "sample_steps", "sample_images",
           "noise_like"]


class Step(NamedTuple):
    """What one sampling step saw and produced; passed to callbacks and yielded by :func:`sample_steps`."""

    index: int  # position in the loop, 0 .. steps-1 (never used to index the schedule)
    t: int  # the timestep of x_t
    x_t: Tensor
    eps: Tensor
    x0_hat: Tensor
    x_next: Tensor  # x at the next (smaller) timestep, or the final image


def noise_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise shaped like x, drawn on the generator's device so seeds reproduce."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def _predict_x0(schedule, x_t, t, eps, clip_x0: bool):
    x0 = x0_from_eps(schedule, x_t, t, eps)
    if clip_x0:
        x0 = x0.clamp(-1, 1)
        eps = eps_from_x0(schedule, x_t, t, x0)
    return x0, eps


def ddim_step(schedule: NoiseSchedule, x_t: Tensor, t, t_prev, eps: Tensor, *, eta: float = 0.0,
              generator=None, clip_x0: bool = False) -> tuple[Tensor, Tensor]:
    """One DDIM step from t to t_prev (-1: clean); returns ``(x_prev, x0_hat)`` (lesson 02)."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1] (0: deterministic DDIM, 1: DDPM-like), got {eta}.")
    t, t_prev = step_timesteps(schedule, t, t_prev, x_t.shape[0])
    x0, eps = _predict_x0(schedule, x_t, t, eps, clip_x0)
    a_t, a_s = schedule.at("abar", t, x_t), abar_at_prev(schedule, t_prev, x_t)
    sigma = eta * ((1 - a_s) / (1 - a_t) * (1 - a_t / a_s)).sqrt()
    x_prev = a_s.sqrt() * x0 + (1 - a_s - sigma**2).clamp(min=0).sqrt() * eps
    if eta > 0:
        x_prev = x_prev + sigma * noise_like(x_t, generator)
    return x_prev, x0


def ddpm_step(schedule: NoiseSchedule, x_t: Tensor, t, t_prev, eps: Tensor, *, generator=None,
              clip_x0: bool = False) -> tuple[Tensor, Tensor]:
    """One ancestral DDPM step: x_prev ~ q(x_prev | x_t, x0_hat); returns ``(x_prev, x0_hat)`` (lesson 02)."""
    t, t_prev = step_timesteps(schedule, t, t_prev, x_t.shape[0])
    x0, _ = _predict_x0(schedule, x_t, t, eps, clip_x0)
    mean, variance = posterior_mean_variance(schedule, x0, x_t, t, t_prev)
    return mean + variance.sqrt() * noise_like(x_t, generator), x0


_STEPPERS = {"ddim": ddim_step, "ddpm": ddpm_step}


def sample_steps(eps_fn: EpsFn, x_T: Tensor, schedule: NoiseSchedule, *,
                 steps: int | None = None, method: str = "ddim", eta: float = 0.0, generator=None,
                 clip_x0: bool = False, progress: bool = True):
    """Yield a :class:`Step` per sampling step from x_T down to the clean image (lesson 02)."""
    if method not in _STEPPERS:
        raise ValueError(f"unknown sampler {method!r}; sample_steps runs 'ddim' or 'ddpm' (sample and sample_images "
                         f"also run the ODE methods {ODE_METHODS}).")
    if not isinstance(schedule, NoiseSchedule):
        raise ValueError(f"DDIM and DDPM need the eps-model's NoiseSchedule, got {type(schedule).__name__}; a velocity "
                         "model on flow.LINEAR samples with method='euler' or 'heun'.")
    if not torch.is_tensor(x_T) or not x_T.is_floating_point() or x_T.ndim < 2:
        raise ValueError("x_T must be a floating-point tensor of shape (B, ...), e.g. torch.randn(B, 1, 28, 28).")
    check_finite(x_T, "x_T")
    options = {"eta": eta} if method == "ddim" else {}
    ts = timestep_sequence(schedule.T, steps).tolist()
    x = x_T
    for i, t in enumerate(progress_bar(ts, desc=f"{method} x{len(ts)}", enabled=progress)):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        eps = eps_fn(x, t_batch)
        if eps.shape != x.shape:
            raise ValueError(f"the eps-function returned shape {tuple(eps.shape)} for x_t of shape {tuple(x.shape)}.")
        check_step(eps, i, t, "the eps-function")
        x_next, x0 = _STEPPERS[method](schedule, x, t_batch, t_prev, eps, generator=generator, clip_x0=clip_x0,
                                       **options)
        yield Step(i, t, x, eps, x0, x_next)
        x = x_next


def sample(eps_fn: EpsFn, x_T: Tensor, schedule: NoiseSchedule, *,
           steps: int | None = None, method: str = "ddim", eta: float = 0.0, generator=None,
           clip_x0: bool = False, callback: Callable[[Step], None] | None = None, progress: bool = True) -> Tensor:
    """Run the sampler from x_T to a clean sample; ``callback(step)`` sees every :class:`Step` (lesson 02).

    Does exactly the update equations unless ``clip_x0=True``: it also samples lesson 01's unbounded 2-D toy.
    For images use :func:`sample_images`, whose default clips x0_hat (the series' one default).

    Runs without autograd; guidance that needs gradients enables them inside its own eps-function.
    ``method="euler"`` or ``"heun"`` integrates the probability-flow ODE instead (:func:`lessonlib.flow.ode_sample`):
    for an eps-function with its schedule, or a velocity function with ``schedule=flow.LINEAR`` (lesson 12).
    """
    if method in ODE_METHODS:
        if callback is not None or eta:
            raise ValueError(f"method={method!r} takes no callback and no eta (they belong to DDIM and DDPM).")
        if steps is None:
            raise ValueError(f"method={method!r} needs steps= (the number of ODE steps).")
        return ode_sample(eps_fn, x_T, schedule, steps=steps, method=method, clip_x0=clip_x0)
    x = x_T
    with torch.no_grad():
        for step in sample_steps(eps_fn, x_T, schedule, steps=steps, method=method, eta=eta, generator=generator,
                                 clip_x0=clip_x0, progress=progress):
            if callback is not None:
                callback(step)
            x = step.x_next
    return x


def sample_images(eps_fn: EpsFn, x_T: Tensor | int, schedule: NoiseSchedule, *, steps: int | None = None,
                  method: str = "ddim", eta: float = 0.0, clip_x0: bool = True, batch: int | None = None,
                  seed: int = 0, shape: tuple[int, ...] = (1, 28, 28), generator: torch.Generator | None = None,
                  progress: bool = False) -> Tensor:
    """Finished images in [-1, 1]: :func:`sample` in batches, x0_hat clipped, the result clamped (lessons 02-10).

    ``x_T`` is the starting noise (B, C, H, W), or a number of images whose noise is drawn batch by batch
    from ``torch.Generator().manual_seed(seed)`` (the same generator then drives DDPM's noise), ``shape``
    per image. Static thresholding of x0_hat (``clip_x0``) is the series' default; pass ``False`` to see
    what it hides. ``batch=None`` samples the given noise in one call, or 250 images at a time.
    """
    if isinstance(x_T, bool) or not (torch.is_tensor(x_T) or (isinstance(x_T, int) and x_T >= 1)):
        raise ValueError(f"x_T must be a noise tensor (B, C, H, W) or a number of images >= 1, got {x_T!r}.")
    if torch.is_tensor(x_T):
        check_finite(x_T, "x_T")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch must be a positive integer or None, got {batch!r}.")
    options = dict(steps=steps, method=method, eta=eta, clip_x0=clip_x0, progress=progress)
    out = []
    if torch.is_tensor(x_T):
        size = batch or len(x_T)
        for i in range(0, len(x_T), size):
            out.append(sample(eps_fn, x_T[i:i + size], schedule, generator=generator, **options))
    else:
        if generator is not None:
            raise ValueError("give seed= when x_T is a number of images; generator= is for a noise tensor you pass.")
        gen, size = torch.Generator().manual_seed(seed), batch or 250
        for i in range(0, x_T, size):
            noise = torch.randn(min(size, x_T - i), *shape, generator=gen)
            out.append(sample(eps_fn, noise, schedule, generator=gen, **options))
    return torch.cat(out).clamp(-1, 1)
