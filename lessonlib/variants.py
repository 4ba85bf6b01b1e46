"""Variants of classifier-free guidance on the same eps-function algebra (lesson 09).

:func:`cfg_variant` returns one EpsFn; every option has a neutral setting at which it is plain CFG,
``eps_u + s (eps_c - eps_u)``, bit for bit:

| option                 | what it does                                                      | neutral      | paper                          |
| ---------------------- | ----------------------------------------------------------------- | ------------ | ------------------------------ |
| ``parallel=eta``       | keep eta of the part of d = c - u parallel to c (eta = 0: only     | 1.0          | Sadat et al. 2024 (APG)        |
|                        | the perpendicular part); ``space`` "eps" or "x0" (c, u = x0_hat)   |              |                                |
| ``along="uncond"``     | take that part along u instead of c: Perp-CFG as seed 001         | "cond"       | Sanchez et al. 2023, as seed   |
|                        | describes it, the guidance perpendicular to the unconditional     |              | 001 cites it                   |
|                        | prediction scaled, the parallel part kept at weight 1             |              |                                |
| ``rescale=phi``        | blend phi of the guided x0_hat rescaled to the std of the          | 0.0          | Lin et al. 2024                |
|                        | conditional x0_hat (per sample)                                   |              |                                |
| ``interval=(lo, hi)``  | guide only for lo <= t <= hi; plain conditional (s = 1) elsewhere  | None         | Kynkaanniemi et al. 2024       |
| ``scale_schedule``     | "constant", or "linear": s_t = 2 s (1 - t / (T - 1)), growing as   | "constant"   | Wang et al. 2024               |
|                        | sampling proceeds, with the same mean over t as s                 |              |                                |

The guided prediction is written c + (s_t - 1)(d_perp + eta d_par), which is u + s_t d at eta = 1. At eta = 0 it is
u + d_par + s_t d_perp: only the perpendicular part is scaled, whichever vector (c or u) the projection is along.

:func:`cfg_zero_star` (Fan et al. 2025, lesson 12) works on eps- and velocity models alike: it scales the
unconditional prediction by s* = <c, u> / |u|^2 (per sample) before guiding, s* u + s (c - s* u), and for a
velocity model it can zero the first steps ("zero-init"). Neutral: ``optimized=False, zero_init=0``.

Lesson 11's methods:

- :func:`apg` (Sadat et al. 2024): the guidance difference d = c - u (on x0_hat by default) as a running average
  with negative momentum, its norm capped at r, its part parallel to c weighted by eta:
  c + (s - 1)(d_perp + eta d_par). Neutral: ``eta=1, norm_threshold=None, momentum=0``.
- :func:`guided_ddim_sample` / :func:`guided_ddim_invert` with ``plus_plus=True`` (CFG++, Chung et al. 2024):
  x0_hat from eps_u + lam (eps_c - eps_u), lam in [0, 1], the step re-noised with eps_u (and, when inverting,
  the roles swapped). At lam = 0 it is unconditional DDIM, which is CFG at s = 0. Each CFG++ step equals a CFG
  step at the scale :func:`cfgpp_scales` gives, which grows with the number of steps.
- :func:`autoguidance` (Karras et al. 2024): D_bad + w (D_good - D_bad), both conditional; at w = 1 the good model.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from .diffusion import eps_from_x0, x0_from_eps
from .guidance import batched_predictions, check_scale, combine, conditional
from .schedules import NoiseSchedule, signal_noise, timestep_sequence
from .types import EpsFn

__all__ = ["cfg_variant", "cfg_zero_star", "optimized_scale", "parallel_part", "rescaled", "check_interval", "apg",
           "guided_ddim_sample", "guided_ddim_invert", "cfgpp_scales", "autoguidance", "distilled"]


def parallel_part(d: Tensor, c: Tensor) -> Tensor:
    """The component of d parallel to c, per sample: (<d, c> / <c, c>) c over all non-batch dimensions."""
    dims = tuple(range(1, d.ndim))
    coef = (d * c).sum(dims, keepdim=True) / (c * c).sum(dims, keepdim=True).clamp_min(1e-12)
    return coef * c


def rescaled(guided: Tensor, cond: Tensor, phi: float) -> Tensor:
    """Lin et al. (2024): phi of ``guided`` rescaled to the std of ``cond`` (per sample), blended with 1 - phi of it."""
    dims = tuple(range(1, guided.ndim))
    ratio = cond.std(dims, keepdim=True) / guided.std(dims, keepdim=True).clamp_min(1e-12)
    return phi * guided * ratio + (1 - phi) * guided


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
                parallel: float = 1.0, space: str = "eps", along: str = "cond", rescale: float = 0.0,
                interval=None, scale_schedule: str = "constant") -> EpsFn:
    """Classifier-free guidance with the lesson 09 variants; the conditional and unconditional passes are batched.
    ``along`` names the prediction the parallel part of d is taken along: "cond" (APG's projection, Sadat et al.)
    or "uncond" (Perp-CFG as seed 001 describes it)."""
    scale, parallel = check_scale(scale), check_scale(parallel, "parallel")
    if space not in ("eps", "x0"):
        raise ValueError(f"space must be 'eps' or 'x0', got {space!r}.")
    if along not in ("cond", "uncond"):
        raise ValueError(f"along must be 'cond' (the projection of APG) or 'uncond' (Perp-CFG), got {along!r}.")
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
            d = d - (1 - parallel) * parallel_part(d, c if along == "cond" else u)
        guided = c + (s - 1) * d
        if rescale > 0:
            g0 = guided if space == "x0" else x0_from_eps(schedule, x, t, guided)
            c0 = c if space == "x0" else x0_from_eps(schedule, x, t, eps_c)
            return eps_from_x0(schedule, x, t, rescaled(g0, c0, rescale))
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


def _finite(value, name: str, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (lo < value if lo_open else lo <= value) and (value < hi if hi_open else value <= hi)
    if not ok:
        raise ValueError(f"{name} must lie in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}, "
                         f"got {value!r}.")
    return float(value)


def apg(model: Callable, cond: Any, null_cond: Any, scale: float, *, schedule: NoiseSchedule, eta: float = 0.0,
        norm_threshold: float | None = None, momentum: float = 0.0, space: str = "x0", cfg_scale: float | None = None,
        cfg_steps: int = 0) -> EpsFn:
    """Adaptive projected guidance (Sadat et al. 2024) as an eps-function (lesson 11).

    d = c - u on x0_hat (``space="x0"``, the paper's choice) or on eps; with ``momentum`` beta in (-1, 0],
    d is replaced by the running average m = d + beta m over the steps of one sampling run; its norm is
    capped at ``norm_threshold`` r (per sample); the guided prediction is c + (s - 1)(d_perp + eta d_par) with
    the parallel part taken along c. The running average starts afresh whenever the timestep does not
    decrease or the batch changes (a new sampling run); it assumes one call per step (DDIM, DDPM, Euler):
    under Heun, which calls twice per step, momentum would restart at every step, so do not combine them.

    APG-mix (diffusers' AdaptiveProjectedMixGuidance): with ``cfg_scale``, the first ``cfg_steps`` steps of a run
    are plain CFG at ``cfg_scale`` and APG takes over after them (diffusers' ``adaptive_projected_guidance_start_step``
    is ``cfg_steps - 1``); the momentum average accumulates d over every step, the CFG steps included.
    """
    scale = check_scale(scale)
    eta = _finite(eta, "eta", 0.0, 1.0)
    momentum = _finite(momentum, "momentum", -1.0, 0.0, lo_open=True)
    if norm_threshold is not None:
        norm_threshold = _finite(norm_threshold, "norm_threshold r", 0.0, math.inf, lo_open=True, hi_open=True)
    if space not in ("eps", "x0"):
        raise ValueError(f"space must be 'eps' or 'x0', got {space!r}.")
    if cfg_scale is not None:
        cfg_scale = check_scale(cfg_scale, "cfg_scale")
    bad_steps = isinstance(cfg_steps, bool) or not isinstance(cfg_steps, int) or cfg_steps < 0
    if bad_steps or (cfg_steps and cfg_scale is None):
        raise ValueError(f"cfg_steps must be an integer >= 0, and > 0 only with a cfg_scale (APG-mix); got "
                         f"cfg_steps={cfg_steps!r}, cfg_scale={cfg_scale!r}.")
    predict = batched_predictions(model, [null_cond, cond])
    state: dict[str, Any] = {"t": None, "shape": None, "average": None, "step": 0}

    def eps_fn(x: Tensor, t: Tensor) -> Tensor:
        eps_u, eps_c = predict(x, t)
        if eta == 1 and norm_threshold is None and momentum == 0 and not cfg_steps:
            return combine(eps_u, [(eps_c, scale)])
        if space == "x0":
            u, c = x0_from_eps(schedule, x, t, eps_u), x0_from_eps(schedule, x, t, eps_c)
        else:
            u, c = eps_u, eps_c
        d = c - u
        now = float(torch.as_tensor(t).reshape(-1)[0])
        if state["t"] is None or now >= state["t"] or state["shape"] != tuple(x.shape):
            state["average"], state["step"] = None, 0  # a new sampling run
        else:
            state["step"] += 1
        state["t"], state["shape"] = now, tuple(x.shape)
        if momentum != 0:
            state["average"] = d if state["average"] is None else d + momentum * state["average"]
            d = state["average"]
        if state["step"] < cfg_steps:  # APG-mix: plain CFG on the first steps
            return combine(eps_u, [(eps_c, cfg_scale)])
        if norm_threshold is not None:
            norm = d.flatten(1).norm(dim=1).reshape(-1, *([1] * (d.ndim - 1)))
            d = d * (norm_threshold / norm.clamp_min(1e-12)).clamp(max=1.0)
        d_par = parallel_part(d, c)
        guided = c + (scale - 1) * ((d - d_par) + eta * d_par)
        return eps_from_x0(schedule, x, t, guided) if space == "x0" else guided

    return eps_fn


def _step_scales(scale, steps: int, plus_plus: bool) -> list[float]:
    """One guidance scale per DDIM step: a number for every step, or (CFG only) a sequence of ``steps`` scales."""
    if plus_plus:
        return [_finite(scale, "CFG++'s lambda", 0.0, 1.0)] * steps
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):
        return [check_scale(scale)] * steps
    scales = [check_scale(float(v)) for v in torch.as_tensor(scale).reshape(-1)]
    if len(scales) != steps:
        raise ValueError(f"give one scale per step: {steps} steps, got {len(scales)} scales.")
    return scales


def _guided_ddim(model, cond, null_cond, scale, x: Tensor, schedule: NoiseSchedule, *, steps: int,
                 plus_plus: bool, invert: bool, clip_x0: bool) -> Tensor:
    ks = timestep_sequence(schedule.T, steps).tolist() + [-1]  # descending, then the clean image
    scales = _step_scales(scale, len(ks) - 1, plus_plus)
    pairs = list(zip(ks[:-1], ks[1:], scales))
    if invert:  # the same steps, walked up from the clean image
        pairs = [(b, a, w) for a, b, w in reversed(pairs)]
    predict = batched_predictions(model, [null_cond, cond])
    for k_from, k_to, w in pairs:
        k_eval = max(k_from, 0)  # inverting from the clean image evaluates the model at timestep 0
        eps_u, eps_c = predict(x, torch.full((x.shape[0],), k_eval, dtype=torch.long, device=x.device))
        guided = combine(eps_u, [(eps_c, w)])
        eps_x0, eps_dir = guided, guided
        if plus_plus:
            eps_x0, eps_dir = (eps_u, guided) if invert else (guided, eps_u)
        (a_from, s_from), (a_to, s_to) = signal_noise(schedule, k_from), signal_noise(schedule, k_to)
        x0 = (x - s_from * eps_x0) / a_from
        if clip_x0:
            x0 = x0.clamp(-1, 1)
        x = a_to * x0 + s_to * eps_dir
    return x


def cfgpp_scales(schedule: NoiseSchedule, steps: int, lam: float) -> Tensor:
    """The CFG scale that each of CFG++'s DDIM steps equals (lesson 11): w = lam sbar_hi / (sbar_hi - sbar_lo).

    With sbar = sqrt(1 - abar) / sqrt(abar), a DDIM step in x / sqrt(abar) moves by -(sbar_hi - sbar_lo) eps_w; CFG++
    moves by -(sbar_hi - sbar_lo) eps_u - sbar_hi lam (eps_c - eps_u). The two agree at this w, sampling and
    inverting alike, so CFG++ is CFG with a per-step scale that grows as the steps get shorter: the same lambda
    guides harder with more steps. The last step (to the clean image) has w = lam.
    """
    lam = _finite(lam, "CFG++'s lambda", 0.0, 1.0)
    ks = timestep_sequence(schedule.T, steps).tolist() + [-1]
    out = []
    for hi, lo in zip(ks[:-1], ks[1:]):
        (a_hi, s_hi), (a_lo, s_lo) = signal_noise(schedule, hi), signal_noise(schedule, lo)
        out.append(lam * (s_hi / a_hi) / (s_hi / a_hi - s_lo / a_lo))
    return torch.tensor(out, dtype=torch.float64)


@torch.no_grad()
def guided_ddim_sample(model: Callable, cond: Any, null_cond: Any, scale, x_T: Tensor,
                       schedule: NoiseSchedule, *, steps: int, plus_plus: bool = False, clip_x0: bool = True) -> Tensor:
    """DDIM (eta = 0) with CFG at ``scale``, or with CFG++ (``plus_plus=True``, ``scale`` = lambda in [0, 1]):
    x0_hat from the guided eps, the step re-noised with eps_u (lesson 11). For CFG, ``scale`` may also be a
    sequence of one scale per step (e.g. :func:`cfgpp_scales`)."""
    return _guided_ddim(model, cond, null_cond, scale, x_T, schedule, steps=steps, plus_plus=plus_plus,
                        invert=False, clip_x0=clip_x0)


@torch.no_grad()
def guided_ddim_invert(model: Callable, cond: Any, null_cond: Any, scale, x0: Tensor,
                       schedule: NoiseSchedule, *, steps: int, plus_plus: bool = False) -> Tensor:
    """DDIM inversion, clean image -> noise on the same grid :func:`guided_ddim_sample` walks back (lesson 11).

    Each step evaluates the model at the current, less noisy point and moves up: with CFG, x0_hat and the new
    noise both from the guided eps; with CFG++, x0_hat from eps_u and the noise from the guided eps.
    """
    return _guided_ddim(model, cond, null_cond, scale, x0, schedule, steps=steps, plus_plus=plus_plus,
                        invert=True, clip_x0=False)


def autoguidance(good: Callable, bad: Callable, cond: Any, weight: float, *, probe: Tensor | None = None) -> EpsFn:
    """Autoguidance (Karras et al. 2024): eps_bad + w (eps_good - eps_bad), both conditioned on ``cond``.

    ``bad`` is a weaker version of ``good`` (smaller or less trained) with the same inputs and classes. Give a
    ``probe`` batch (x, or (x, t)) to check at once that both models accept it and agree in output shape.
    """
    weight = check_scale(weight, "weight")
    for name, m in (("good", good), ("bad", bad)):
        if not callable(m):
            raise ValueError(f"the {name} model must be callable as model(x_t, t, cond), got {type(m).__name__}.")
    for field in ("num_classes", "prediction", "in_channels", "image_size"):
        values = [_described(m, field) for m in (good, bad)]
        if None not in values and values[0] != values[1]:
            raise ValueError(f"the guide model has {field} = {values[1]!r}, the main model {values[0]!r}: autoguidance "
                             "needs a weaker version of the same model (same inputs, same classes, same prediction).")
    if probe is not None:
        x, t = probe if isinstance(probe, tuple) else (
            probe, torch.zeros(probe.shape[0], dtype=torch.long, device=probe.device))
        with torch.no_grad():
            shapes = [tuple(conditional(m, cond)(x, t).shape) for m in (good, bad)]
        if shapes[0] != shapes[1]:
            raise ValueError(f"the good model returns {shapes[0]}, the bad one {shapes[1]}: they must predict the "
                             "same thing for the same input.")
    predict_good, predict_bad = conditional(good, cond), conditional(bad, cond)

    def eps_fn(x: Tensor, t: Tensor) -> Tensor:
        return combine(predict_bad(x, t), [(predict_good(x, t), weight)])

    return eps_fn


def _described(model: Any, field: str) -> Any:
    """A model's own ``field`` or its config's (U-Nets keep num_classes and the rest in ``model.config``)."""
    value = getattr(model, field, None)
    return value if value is not None else getattr(getattr(model, "config", None), field, None)


def distilled(student: Callable, cond: Any, scale: float) -> EpsFn:
    """A guidance-distilled student (``UNetConfig.scale_range``) at scale s: one forward pass per step (lesson 11).

    The student itself refuses a scale outside the range it was distilled for.
    """
    return conditional(student, {"class": cond, "scale": check_scale(scale)})
