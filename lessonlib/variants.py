"""Variants of classifier-free guidance on the same eps-function algebra (lesson 09).

:func:`cfg_variant` returns one EpsFn; every option has a neutral setting at which it is plain CFG,
``eps_u + s (eps_c - eps_u)``, bit for bit:

| option                 | what it does                                                      | neutral      | paper                          |
| ---------------------- | ----------------------------------------------------------------- | ------------ | ------------------------------ |
| ``parallel=eta``       | keep eta of the part of d = c - u parallel to c (eta = 0: only     | 1.0          | Sadat et al. 2024 (APG)        |
|                        | the perpendicular part); ``space`` "eps" or "x0" (c, u = x0_hat)   |              |                                |
| ``rescale=phi``        | blend phi of the guided x0_hat rescaled to the std of the          | 0.0          | Lin et al. 2024                |
|                        | conditional x0_hat (per sample)                                   |              |                                |
| ``interval=(lo, hi)``  | guide only for lo <= t <= hi; plain conditional (s = 1) elsewhere  | None         | Kynkaanniemi et al. 2024       |
| ``scale_schedule``     | "constant", or "linear": s_t = 2 s (1 - t / (T - 1)), growing as   | "constant"   | Wang et al. 2024               |
|                        | sampling proceeds, with the same mean over t as s                 |              |                                |

The guided prediction is written c + (s_t - 1)(d_perp + eta d_par), which is u + s_t d at eta = 1.

:func:`cfg_zero_star` (Fan et al. 2025, lesson 12) works on eps- and velocity models alike: it scales the
unconditional prediction by s* = <c, u> / |u|^2 (per sample) before guiding, s* u + s (c - s* u), and for a
velocity model it can zero the first steps ("zero-init"). Neutral: ``optimized=False, zero_init=0``.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from .diffusion import eps_from_x0, x0_from_eps
from .guidance import batched_predictions, check_scale, combine
from .schedules import NoiseSchedule
from .types import EpsFn

__all__ = ["cfg_variant", "cfg_zero_star", "optimized_scale", "parallel_part", "check_interval"]


def parallel_part(d: Tensor, c: Tensor) -> Tensor:
    """The component of d parallel to c, per sample: (<d, c> / <c, c>) c over all non-batch dimensions."""
    dims = tuple(range(1, d.ndim))
    coef = (d * c).sum(dims, keepdim=True) / (c * c).sum(dims, keepdim=True).clamp_min(1e-12)
    return coef * c


def check_interval(interval, T: int) -> tuple[int, int] | None:
    """Validate a guidance interval (lo, hi) of timesteps: 0 <= lo <= hi <= T - 1."""
    if interval is None:
        return None
    try:
        lo, hi = (int(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"interval must be a pair (lo, hi) of timesteps, got {interval!r}.") from None
    if not 0 <= lo <= hi <= T - 1:
        raise ValueError(f"interval must satisfy 0 <= lo <= hi <= {T - 1}, got ({lo}, {hi}); "
                         "give the smaller timestep first.")
    return lo, hi


def _scale_at(scale: float, t: Tensor, T: int, interval, scale_schedule: str, like: Tensor) -> Tensor:
    tt = t.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))
    s = torch.full_like(tt, scale)
    if scale_schedule == "linear":
        s = 2 * scale * (1 - tt / (T - 1))
    if interval is not None:
        s = torch.where((tt >= interval[0]) & (tt <= interval[1]), s, torch.ones_like(s))
    return s


def cfg_variant(model: Callable, cond: Any, null_cond: Any, scale: float, *, schedule: NoiseSchedule,
                parallel: float = 1.0, space: str = "eps", rescale: float = 0.0, interval=None,
                scale_schedule: str = "constant") -> EpsFn:
    """Classifier-free guidance with the lesson 09 variants; the conditional and unconditional passes are batched."""
    scale, parallel = check_scale(scale), check_scale(parallel, "parallel")
    if space not in ("eps", "x0"):
        raise ValueError(f"space must be 'eps' or 'x0', got {space!r}.")
    if not (isinstance(rescale, (int, float)) and math.isfinite(rescale) and 0 <= rescale <= 1):
        raise ValueError(f"rescale must lie in [0, 1] (0: off, 1: fully rescaled), got {rescale!r}.")
    if scale_schedule not in ("constant", "linear"):
        raise ValueError(f"scale_schedule must be 'constant' or 'linear', got {scale_schedule!r}.")
    interval = check_interval(interval, schedule.T)
    predict = batched_predictions(model, [null_cond, cond])
    plain = parallel == 1 and rescale == 0 and scale_schedule == "constant"

    def eps_fn(x: Tensor, t: Tensor) -> Tensor:
        eps_u, eps_c = predict(x, t)
        if plain and interval is None:
            return combine(eps_u, [(eps_c, scale)])
        s = _scale_at(scale, t.reshape(-1).expand(x.shape[0]), schedule.T, interval, scale_schedule, x)
        if space == "x0":
            u, c = x0_from_eps(schedule, x, t, eps_u), x0_from_eps(schedule, x, t, eps_c)
        else:
            u, c = eps_u, eps_c
        d = c - u
        if parallel != 1:
            d = d - (1 - parallel) * parallel_part(d, c)
        guided = c + (s - 1) * d
        if rescale > 0:
            g0 = guided if space == "x0" else x0_from_eps(schedule, x, t, guided)
            c0 = c if space == "x0" else x0_from_eps(schedule, x, t, eps_c)
            dims = tuple(range(1, x.ndim))
            ratio = c0.std(dims, keepdim=True) / g0.std(dims, keepdim=True).clamp_min(1e-12)
            guided = rescale * g0 * ratio + (1 - rescale) * g0
            return eps_from_x0(schedule, x, t, guided)
        return eps_from_x0(schedule, x, t, guided) if space == "x0" else guided

    return eps_fn


def optimized_scale(c: Tensor, u: Tensor) -> Tensor:
    """CFG-Zero*'s s* = <c, u> / |u|^2 per sample: the multiple of u closest to c (shape (B, 1, ...))."""
    dims = tuple(range(1, c.ndim))
    return (c * u).sum(dims, keepdim=True) / (u * u).sum(dims, keepdim=True).clamp_min(1e-12)


def cfg_zero_star(model: Callable, cond: Any, null_cond: Any, scale: float, *, optimized: bool = True,
                  zero_init: float = 0.0) -> Callable[[Tensor, Tensor], Tensor]:
    """CFG-Zero* (Fan et al. 2025): s* u + s (c - s* u) with s* from :func:`optimized_scale` (lesson 12).

    ``zero_init`` in [0, 1) zeroes the velocity at flow times t > 1 - zero_init (the first steps, where the
    model's guess of the mean is worst); it needs a velocity model (float times in [0, 1]). With
    ``optimized=False`` and ``zero_init=0`` this is plain CFG, bit for bit.
    """
    scale = check_scale(scale)
    if not isinstance(optimized, bool):
        raise ValueError(f"optimized must be True or False, got {optimized!r}.")
    if not (isinstance(zero_init, (int, float)) and math.isfinite(zero_init) and 0 <= zero_init < 1):
        raise ValueError(f"zero_init must lie in [0, 1) (the share of flow time, from t = 1, with zero velocity), "
                         f"got {zero_init!r}.")
    predict = batched_predictions(model, [null_cond, cond])

    def fn(x: Tensor, t: Tensor) -> Tensor:
        u, c = predict(x, t)
        if optimized:
            u = optimized_scale(c, u) * u
        out = combine(u, [(c, scale)])
        if zero_init > 0:
            if not torch.as_tensor(t).dtype.is_floating_point:
                raise ValueError("zero_init zeroes a velocity, so it needs a velocity model (float flow times in "
                                 "[0, 1]); for an eps-model use zero_init=0.")
            late = (torch.as_tensor(t).reshape(-1) > 1 - zero_init).to(x.device)
            out = torch.where(late.reshape(-1, *([1] * (x.ndim - 1))), torch.zeros_like(out), out)
        return out

    return fn
