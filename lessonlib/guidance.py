"""Guidance as an algebra over eps-functions (lessons 01, 04, 06, 07).

An ``EpsFn`` maps ``(x_t, t) -> eps_hat`` with integer timesteps t of shape (B,). Models become
EpsFns by binding a condition (:func:`conditional`); guidance methods take EpsFns and return one;
samplers consume a single EpsFn. One scale convention everywhere:

    scale = 0: unconditional    scale = 1: plain conditional    scale > 1: guided

| form                                  | code                         | paper                      |
| ------------------------------------- | ---------------------------- | -------------------------- |
| eps_u + s (eps_c - eps_u)             | :func:`cfg`                  | Ho & Salimans 2022 (s=1+w) |
| eps_u + sum_i w_i (eps_i - eps_u)     | :func:`compose`              | Liu et al. 2022            |
| eps - s sqrt(1 - abar_t) grad         | :func:`grad_guidance`        | Dhariwal & Nichol 2021     |
| mean + s sigma_t^2 grad (DDPM)        | ``form="mean_shift"``        | Dhariwal & Nichol, Alg. 1  |
| grad cos(CLIP(x0_hat), text)          | :func:`clip_grad`            | Nichol et al. 2022 (GLIDE) |
| grad cos(CLIP_noisy(x_t, t), text)    | :func:`noisy_clip_grad`      | Nichol et al. 2022 (GLIDE) |

The (1 + w) form of Ho & Salimans, (1 + w) eps_c - w eps_u, is the same number with w = s - 1.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .diffusion import x0_from_eps
from .schedules import NoiseSchedule
from .types import EpsFn, GradFn, check_finite

__all__ = [
    "check_scale",
    "combine",
    "conditional",
    "cfg",
    "compose",
    "batched_predictions",
    "batched_compose",
    "batched_cfg",
    "mean_shift_factor",
    "grad_guidance",
    "classifier_grad",
    "input_grad",
    "clip_grad",
    "noisy_clip_grad",
]



def check_scale(scale, name: str = "scale") -> float:
    """Return the guidance scale as a float; NaN, infinite or non-numeric scales raise a ValueError."""
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number (0: unconditional, 1: conditional, >1: guided), "
                         f"got {scale!r}.") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {scale!r}.")
    return value


def combine(eps_uncond: Tensor, terms: Sequence[tuple[Tensor, float]]) -> Tensor:
    """eps_u + sum_i w_i (eps_i - eps_u); one term is torch.lerp, exact at w = 0 and w = 1 (lesson 07)."""
    if not terms:
        raise ValueError("give at least one (eps, weight) term to combine with the unconditional prediction.")
    for eps, _ in terms:
        if eps.shape != eps_uncond.shape:
            raise ValueError(f"predictions to combine differ in shape: {tuple(eps.shape)} vs {tuple(eps_uncond.shape)}.")
    if len(terms) == 1:
        eps, w = terms[0]
        return torch.lerp(eps_uncond, eps, check_scale(w, "weight"))
    return eps_uncond + sum(check_scale(w, "weight") * (eps - eps_uncond) for eps, w in terms)


def _batch_cond(cond: Any, batch: int) -> Any:
    """Broadcast a condition (tensor, number, or dict/tuple of them) to a leading batch dimension."""
    if isinstance(cond, dict):
        return {k: _batch_cond(v, batch) for k, v in cond.items()}
    if isinstance(cond, (tuple, list)):
        return type(cond)(_batch_cond(v, batch) for v in cond)
    cond = torch.as_tensor(cond)
    if cond.ndim == 0:
        return cond.expand(batch)
    if cond.shape[0] == batch:
        return cond
    if cond.shape[0] == 1:
        return cond.expand(batch, *cond.shape[1:])
    raise ValueError(f"a condition with leading size {cond.shape[0]} does not fit a batch of {batch}; "
                     "give one condition per image or a single one for all.")


def _cat_conds(conds: Sequence[Any]) -> Any:
    first = conds[0]
    if isinstance(first, dict):
        return {k: _cat_conds([c[k] for c in conds]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_cat_conds(parts) for parts in zip(*conds))
    return torch.cat(list(conds))


def conditional(model: Callable, cond: Any) -> EpsFn:
    """Bind a condition: ``model(x_t, t, cond)`` becomes an EpsFn ``(x_t, t) -> eps`` (lesson 04)."""
    check_finite(cond, "the condition")
    return lambda x, t: model(x, t, _batch_cond(cond, x.shape[0]))


def cfg(eps_cond: EpsFn, eps_uncond: EpsFn, scale: float) -> EpsFn:
    """Classifier-free guidance eps_u + s (eps_c - eps_u) from two EpsFns (two forward passes) (lesson 07)."""
    return compose(eps_uncond, [(eps_cond, scale)])


def compose(eps_uncond: EpsFn, terms: Sequence[tuple[EpsFn, float]]) -> EpsFn:
    """eps_u + sum_i w_i (eps_i - eps_u) over EpsFns; negative weights push away (lesson 08)."""
    terms = [(fn, check_scale(w, "weight")) for fn, w in terms]
    if not terms:
        raise ValueError("compose needs at least one (eps_fn, weight) term.")
    if all(w == 0 for _, w in terms):
        return eps_uncond  # nothing to evaluate: every term is switched off
    return lambda x, t: combine(eps_uncond(x, t), [(fn(x, t), w) for fn, w in terms])


def batched_predictions(model: Callable, conds: Sequence[Any]) -> Callable[[Tensor, Tensor], list[Tensor]]:
    """One forward pass over len(conds) copies of the batch; returns one eps per condition (lesson 07)."""
    if not conds:
        raise ValueError("give at least one condition.")
    check_finite(list(conds), "the conditions")

    def predict(x: Tensor, t: Tensor) -> list[Tensor]:
        n, batch = len(conds), x.shape[0]
        cond = _cat_conds([_batch_cond(c, batch) for c in conds])
        eps = model(torch.cat([x] * n), torch.cat([t.expand(batch)] * n), cond)
        return list(eps.chunk(n))

    return predict


def batched_compose(model: Callable, null_cond: Any, terms: Sequence[tuple[Any, float]]) -> EpsFn:
    """:func:`compose` with every branch of ``model(x, t, cond)`` in one batched forward call (lesson 08)."""
    weights = [check_scale(w, "weight") for _, w in terms]
    predict = batched_predictions(model, [null_cond] + [c for c, _ in terms])

    def eps_fn(x: Tensor, t: Tensor) -> Tensor:
        eps_u, *eps_terms = predict(x, t)
        return combine(eps_u, list(zip(eps_terms, weights)))

    return eps_fn


def batched_cfg(model: Callable, cond: Any, null_cond: Any, scale: float) -> EpsFn:
    """Classifier-free guidance with conditional and unconditional passes batched together (lesson 07)."""
    return batched_compose(model, null_cond, [(cond, scale)])


def mean_shift_factor(schedule: NoiseSchedule, t, like: Tensor) -> Tensor:
    """kappa_t = sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t), the mean-shift to eps-form ratio (lesson 04).

    For one full DDPM step (t -> t-1), shifting the posterior mean by s sigma_t^2 grad is exactly the
    eps-form guidance with scale s * kappa_t; kappa_0 = 0, and kappa_t ~ sqrt(alpha_t) ~ 1 for t >> 1.
    """
    alpha, a, a_prev = (schedule.at(k, t, like) for k in ("alphas", "abar", "abar_prev"))
    return alpha.sqrt() * (1 - a_prev) / (1 - a)


def grad_guidance(eps_fn: EpsFn, schedule: NoiseSchedule, grad_fn: GradFn, scale: float, *,
                  form: str = "eps") -> EpsFn:
    """Gradient guidance: eps - s sqrt(1 - abar_t) grad_fn(x_t, t) (lesson 04).

    ``form="eps"`` is the eps shift of Dhariwal & Nichol (their Algorithm 2, used with DDIM).
    ``form="mean_shift"`` gives, for full-step DDPM (steps = T), exactly their Algorithm 1:
    x_{t-1} = mean + s sigma_t^2 grad + sigma_t z, by scaling the eps shift by
    :func:`mean_shift_factor`. At scale 0 the guided EpsFn is ``eps_fn`` itself.
    """
    scale = check_scale(scale)
    if form not in ("eps", "mean_shift"):
        raise ValueError(f"form must be 'eps' or 'mean_shift', got {form!r}.")
    if scale == 0:
        return eps_fn

    def guided(x: Tensor, t: Tensor) -> Tensor:
        eps = eps_fn(x, t)
        grad = grad_fn(x, t)
        if grad.shape != x.shape:
            raise ValueError(f"grad_fn returned shape {tuple(grad.shape)} for x_t of shape {tuple(x.shape)}.")
        shift = scale * (1 - schedule.at("abar", t, x)).sqrt() * grad
        if form == "mean_shift":
            shift = shift * mean_shift_factor(schedule, t, x)
        return eps - shift

    return guided


def classifier_grad(classifier: Callable, y, *, num_classes: int = 10) -> GradFn:
    """grad_x log p(y | x_t) of a noise-aware classifier ``classifier(x_t, t) -> logits`` (lesson 04).

    Gradients are enabled inside, so it works within the samplers' no-grad loop. ``y`` is a class
    (int) or one class per image (B,).
    """
    labels = torch.as_tensor(y)
    if labels.dtype.is_floating_point or labels.ndim > 1:
        raise ValueError(f"y must be an integer class or a (B,) tensor of classes, got {y!r}.")
    if torch.any((labels < 0) | (labels >= num_classes)):
        raise ValueError(f"classes must lie in 0..{num_classes - 1}, got {labels.unique().tolist()}.")

    def log_p(x: Tensor, t: Tensor) -> Tensor:
        chosen = _batch_cond(labels, x.shape[0]).to(x.device).reshape(-1, 1).long()
        return torch.log_softmax(classifier(x, t), dim=1).gather(1, chosen)

    return lambda x, t: input_grad(log_p, x, t)


def input_grad(score: Callable[[Tensor, Tensor], Tensor], x: Tensor, t: Tensor) -> Tensor:
    """grad_x of sum(score(x, t)) with gradients enabled, usable inside the samplers' no-grad loop."""
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(score(x_in, t).sum(), x_in)
    return g


def _cosine_grad(embed: Callable[[Tensor, Tensor], Tensor], text_emb: Tensor) -> GradFn:
    """grad_x cos(embed(x_t, t), e_text), the shared core of both CLIP-guidance directions."""
    if text_emb.ndim not in (1, 2):
        raise ValueError(f"text_emb must be (D,) or (B, D), got shape {tuple(text_emb.shape)}.")
    check_finite(text_emb, "text_emb")
    target = torch.nn.functional.normalize(text_emb.detach(), dim=-1).reshape(-1, text_emb.shape[-1])

    def cosine(x: Tensor, t: Tensor) -> Tensor:
        emb = torch.nn.functional.normalize(embed(x, t), dim=-1)
        return (emb * _batch_cond(target.to(emb.device), x.shape[0])).sum(-1)

    return lambda x, t: input_grad(cosine, x, t)


def clip_grad(image_encoder: Callable[[Tensor], Tensor], text_emb: Tensor, *, eps_fn: EpsFn,
              schedule: NoiseSchedule) -> GradFn:
    """grad_x cos(E(x0_hat(x_t)), e_text): a clean CLIP guides through x0_hat (lesson 06).

    x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) (:func:`~lessonlib.diffusion.x0_from_eps`), clipped
    to [-1, 1] as the sampler clips it; the gradient flows back through the eps-model too. ``text_emb`` is
    (D,) or (B, D).
    """
    return _cosine_grad(lambda x, t: image_encoder(x0_from_eps(schedule, x, t, eps_fn(x, t)).clamp(-1, 1)), text_emb)


def noisy_clip_grad(noisy_encoder: Callable[[Tensor, Tensor], Tensor], text_emb: Tensor) -> GradFn:
    """grad_x cos(E(x_t, t), e_text): a noise-aware image tower reads x_t directly (GLIDE's noised CLIP, lesson 06)."""
    return _cosine_grad(noisy_encoder, text_emb)
