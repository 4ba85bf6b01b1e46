"""The forward process and the conversions between eps, x0 and the score (lesson 01).

With a = abar_t (see :mod:`lessonlib.schedules` for the notation table):

    x_t   = sqrt(a) x0 + sqrt(1 - a) eps                     q_sample
    x0    = (x_t - sqrt(1 - a) eps) / sqrt(a)                x0_from_eps (Tweedie, given eps_hat)
    score = grad log q(x_t | x0) = -eps / sqrt(1 - a)        score_from_eps

Posterior of one (possibly strided) step from t down to s < t, with a_s = abar_s:

    q(x_s | x_t, x0) = N(c0 x0 + ct x_t, var)
    c0  = sqrt(a_s) (1 - a_t / a_s) / (1 - a_t)
    ct  = sqrt(a_t / a_s) (1 - a_s) / (1 - a_t)
    var = (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)

For s = t - 1 this is the DDPM posterior with beta_tilde_t = var.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .schedules import NoiseSchedule

__all__ = [
    "q_sample",
    "x0_from_eps",
    "eps_from_x0",
    "score_from_eps",
    "eps_from_score",
    "posterior_mean_variance",
    "step_timesteps",
    "abar_at_prev",
    "denoising_loss", "min_snr_weights",
    "check_same_shape",
]


def check_same_shape(**tensors: Tensor) -> None:
    """Raise a ValueError naming the tensors if their shapes differ."""
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if len(set(shapes.values())) > 1:
        listing = ", ".join(f"{k}: {s}" for k, s in shapes.items())
        raise ValueError(f"these tensors must have the same shape, got {listing}.")


def q_sample(schedule: NoiseSchedule, x0: Tensor, t, noise: Tensor | None = None, *, generator=None) -> Tensor:
    """Sample q(x_t | x_0): sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (lesson 01)."""
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    check_same_shape(x0=x0, noise=noise)
    a = schedule.at("abar", t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def x0_from_eps(schedule: NoiseSchedule, x_t: Tensor, t, eps: Tensor) -> Tensor:
    """x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t): Tweedie's estimate given eps_hat (lesson 01)."""
    check_same_shape(x_t=x_t, eps=eps)
    a = schedule.at("abar", t, x_t)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def eps_from_x0(schedule: NoiseSchedule, x_t: Tensor, t, x0: Tensor) -> Tensor:
    """eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t), the inverse of :func:`x0_from_eps` (lesson 01)."""
    check_same_shape(x_t=x_t, x0=x0)
    a = schedule.at("abar", t, x_t)
    return (x_t - a.sqrt() * x0) / (1 - a).sqrt()


def score_from_eps(schedule: NoiseSchedule, t, eps: Tensor) -> Tensor:
    """score = -eps / sqrt(1 - abar_t), the score-noise identity (lesson 01)."""
    return -eps / (1 - schedule.at("abar", t, eps)).sqrt()


def eps_from_score(schedule: NoiseSchedule, t, score: Tensor) -> Tensor:
    """eps = -sqrt(1 - abar_t) score, the inverse of :func:`score_from_eps` (lesson 01)."""
    return -(1 - schedule.at("abar", t, score)).sqrt() * score


def step_timesteps(schedule: NoiseSchedule, t, t_prev, batch: int):
    """Validate a step from t down to t_prev (default t - 1; -1 means the clean image) as (B,) tensors."""
    t = schedule.check_timesteps(t, batch=batch).expand(batch)
    t_prev = t - 1 if t_prev is None else torch.as_tensor(t_prev)
    if t_prev.dtype.is_floating_point:
        raise ValueError(f"t_prev must be an integer timestep or -1, got dtype {t_prev.dtype}.")
    t_prev = t_prev.reshape(-1).expand(batch) if t_prev.numel() == 1 else t_prev.long()
    if t_prev.shape != t.shape or torch.any(t_prev < -1) or torch.any(t_prev >= t.to(t_prev.device)):
        raise ValueError(
            "t_prev must be -1 (the clean image) or a timestep smaller than t, one per image: "
            "sampling runs from noise (large t) towards data."
        )
    return t, t_prev


def abar_at_prev(schedule: NoiseSchedule, t_prev: Tensor, like: Tensor) -> Tensor:
    """abar at t_prev shaped like ``schedule.at``, with abar_{-1} = 1 (the clean image)."""
    a = schedule.at("abar", t_prev.clamp(min=0), like)
    return torch.where((t_prev < 0).to(like.device).reshape(a.shape), torch.ones_like(a), a)


def posterior_mean_variance(schedule: NoiseSchedule, x0: Tensor, x_t: Tensor, t, t_prev=None):
    """Mean and variance of q(x_{t_prev} | x_t, x0); t_prev defaults to t - 1 (lesson 02).

    Returns ``(mean, variance)`` with variance shaped to broadcast (B, 1, ..., 1); see the module
    docstring for the formulas. At t_prev = -1 the mean is x0 and the variance 0.
    """
    check_same_shape(x0=x0, x_t=x_t)
    t, t_prev = step_timesteps(schedule, t, t_prev, x_t.shape[0])
    a_t = schedule.at("abar", t, x_t)
    a_s = abar_at_prev(schedule, t_prev, x_t)
    step_alpha = a_t / a_s  # the alpha of one (possibly strided) step
    c0 = a_s.sqrt() * (1 - step_alpha) / (1 - a_t)
    ct = step_alpha.sqrt() * (1 - a_s) / (1 - a_t)
    variance = (1 - a_s) / (1 - a_t) * (1 - step_alpha)
    return c0 * x0 + ct * x_t, variance


def min_snr_weights(schedule: NoiseSchedule, t: Tensor, gamma: float) -> Tensor:
    """Min-SNR-gamma loss weights for an eps-prediction loss (Hang et al. 2023): min(SNR_t, gamma) / SNR_t.

    SNR_t = abar_t / (1 - abar_t). The eps loss weighs the x0 error by SNR_t, so the nearly clean timesteps
    dominate its gradient; this weight caps that at gamma, giving the noisy timesteps (where the image's layout is
    decided) a fair share. 1 wherever SNR_t <= gamma.
    """
    if not (isinstance(gamma, (int, float)) and not isinstance(gamma, bool) and gamma > 0 and math.isfinite(gamma)):
        raise ValueError(f"min-SNR gamma must be a positive number, got {gamma!r}.")
    abar = schedule.abar.to(t.device)[t]
    snr = abar / (1 - abar)
    return snr.clamp(max=gamma) / snr


def denoising_loss(eps_model, x0: Tensor, schedule: NoiseSchedule, *, generator=None, t=None,
                   min_snr_gamma: float | None = None, **model_kwargs) -> Tensor:
    """Denoising score matching: E || eps - eps_model(q_sample(x0, t, eps), t) ||^2, t uniform (lesson 01).

    With ``min_snr_gamma`` each sample's squared error is weighted by :func:`min_snr_weights` (issue 17's recipes).
    """
    if t is None:
        t = torch.randint(0, schedule.T, (x0.shape[0],), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    x_t = q_sample(schedule, x0, t, noise)
    err = (eps_model(x_t, t, **model_kwargs) - noise).pow(2)
    if min_snr_gamma is None:
        return err.mean()
    return (err.flatten(1).mean(1) * min_snr_weights(schedule, t, min_snr_gamma).to(err)).mean()
