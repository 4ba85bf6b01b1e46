"""The guiders of diffusers (``diffusers.guiders``, 0.42) as combination rules on predictions, and ICG (lesson 11).

Each rule takes the conditional prediction ``c``, the unconditional ``u`` (and, for the perturbation guiders, the
prediction ``p`` of a perturbed copy of the model) and returns the guided prediction, in the course's one
convention: scale 1 is the plain conditional prediction. ``tests/test_guiders.py`` feeds the same predictions to
diffusers' guider and to these and checks they agree to float tolerance (``pytest -k diffusers``).

| diffusers guider                     | here                                   | rule                                         |
| ------------------------------------ | -------------------------------------- | -------------------------------------------- |
| ClassifierFreeGuidance               | :func:`cfg_rule`                       | u + s (c - u), optionally rescaled           |
| TangentialClassifierFreeGuidance     | :func:`tangential_rule` (Sadat 2025)   | CFG with u replaced by its component along   |
|                                      |                                        | the top singular direction of [c; u]         |
| MagnitudeAwareGuidance               | :func:`magnitude_aware_rule`           | s_eff = 1 + (s - 1) exp(-alpha |c-u| / |u|)  |
| PerturbedAttentionGuidance,          | :func:`perturbed_rule` and             | c + (s - 1)(c - u) + (w - 1)(c - p)          |
| SkipLayerGuidance,                   | :func:`stack_rule` (any number of      | (diffusers' own scale for the p term is w - 1|
| SmoothedEnergyGuidance, LTX2Guidance | delta terms)                           | when CFG is on; see :func:`perturbed_rule`)  |
| AutoGuidance                         | :func:`cfg_rule` with u from a worse   | bad + w (good - bad)                         |
|                                      | model (:func:`lessonlib.variants       |                                              |
|                                      | .autoguidance`), or from the same one  |                                              |
|                                      | with blocks skipped                    |                                              |
|                                      | (:func:`layer_skip_autoguidance`)      |                                              |
| ClassifierFreeZeroStarGuidance       | :func:`lessonlib.variants.cfg_zero_star` | s* u + s (c - s* u)                        |
| AdaptiveProjectedGuidance            | :func:`lessonlib.variants.apg`          | c + (s - 1)(d_perp + eta d_par), the paper's |
|                                      | (``space="eps"``)                      | form; diffusers' default is u + s(...)       |
| AdaptiveProjectedMixGuidance         | :func:`lessonlib.variants.apg` with    | CFG for the first steps, APG afterwards; the |
|                                      | ``cfg_scale`` and ``cfg_steps``        | momentum average runs through both           |
| FrequencyDecoupledGuidance           | :func:`frequency_decoupled_rule`       | CFG per band of a Laplacian pyramid, one     |
|                                      |                                        | scale per band (high frequencies first)      |
| (not in diffusers) ICG               | :func:`independent_condition`          | CFG with a random condition as u             |

:func:`perturbation_guidance` is PAG, SEG or SLG as an eps-function on the course's U-Net: the perturbed branch
comes from :func:`lessonlib.nets.perturb.perturbed` (identity attention, blurred queries, skipped layers).

Guiders switch on for part of sampling with diffusers' rule :func:`in_window`: step k of n guides when
``int(start n) <= k < int(stop n)``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .guidance import batched_predictions, check_scale, combine, conditional
from .nets.perturb import perturbed, skipped_blocks
from .types import EpsFn
from .variants import parallel_part, rescaled

__all__ = ["cfg_rule", "tangential_rule", "tangential_part", "magnitude_aware_rule", "perturbed_rule", "stack_rule",
           "in_window", "tangential_cfg", "magnitude_aware", "independent_condition", "perturbation_guidance",
           "laplacian_pyramid", "from_pyramid", "frequency_decoupled_rule", "frequency_decoupled",
           "layer_skip_autoguidance"]


def _same_shape(*tensors: Tensor) -> None:
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"the predictions must have one shape, got {sorted(shapes)}.")
    if tensors[0].ndim < 2:
        raise ValueError("predictions are batched, (B, ...): one row per sample.")


def _rescale(guided: Tensor, c: Tensor, rescale: float) -> Tensor:
    if not (isinstance(rescale, (int, float)) and math.isfinite(rescale) and 0 <= rescale <= 1):
        raise ValueError(f"rescale (phi, Lin et al. 2024) must lie in [0, 1], got {rescale!r}.")
    return rescaled(guided, c, rescale) if rescale > 0 else guided


def cfg_rule(c: Tensor, u: Tensor, scale: float, *, rescale: float = 0.0) -> Tensor:
    """u + s (c - u), then ``rescale`` phi of it rescaled to c's standard deviation (ClassifierFreeGuidance)."""
    _same_shape(c, u)
    return _rescale(combine(u, [(c, check_scale(scale))]), c, rescale)


def tangential_part(c: Tensor, u: Tensor) -> Tensor:
    """u projected on the top right-singular direction of the 2 x D matrix [c; u], per sample (TCFG, Sadat 2025).

    Computed from the 2 x 2 Gram matrix G = M M^T: its top eigenvector a gives the direction v = a^T M / |a^T M|,
    and the projection is <u, v> v. This drops the part of u that the conditional prediction does not share.
    """
    _same_shape(c, u)
    m = torch.stack([c.flatten(1), u.flatten(1)], dim=1).double()  # (B, 2, D)
    gram = m @ m.transpose(1, 2)
    _, vectors = torch.linalg.eigh(gram)  # ascending eigenvalues: the last column is the top one
    v = (vectors[:, :, -1:].transpose(1, 2) @ m).squeeze(1)
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)
    uf = u.flatten(1).double()
    return ((uf * v).sum(1, keepdim=True) * v).reshape(u.shape).to(u.dtype)


def tangential_rule(c: Tensor, u: Tensor, scale: float, *, rescale: float = 0.0) -> Tensor:
    """CFG with u replaced by :func:`tangential_part` (TangentialClassifierFreeGuidance)."""
    return cfg_rule(c, tangential_part(c, u), scale, rescale=rescale)


def magnitude_aware_rule(c: Tensor, u: Tensor, scale: float, *, alpha: float = 8.0, rescale: float = 0.0) -> Tensor:
    """u + s_eff (c - u) with s_eff = 1 + (s - 1) exp(-alpha |c - u| / |u|) per sample (MagnitudeAwareGuidance).

    Where the guidance difference is large against the prediction (early, noisy steps) the scale falls back
    towards 1, the plain conditional prediction.
    """
    _same_shape(c, u)
    scale = check_scale(scale)
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}.")
    dims = tuple(range(1, c.ndim))
    norm = lambda v: torch.linalg.vector_norm(v, dim=dims, keepdim=True)  # noqa: E731
    ratio = norm(c - u) / norm(u).clamp_min(1e-12)
    effective = 1 + (scale - 1) * torch.exp(-alpha * ratio)
    return _rescale(u + effective * (c - u), c, rescale)


def stack_rule(c: Tensor, branches: Sequence[tuple[Tensor, float]], *, rescale: float = 0.0) -> Tensor:
    """c + sum_i (w_i - 1)(c - b_i): several guiders at once, each a delta away from its own weaker branch b_i.

    CFG is the term (u, s); perturbed-attention, skip-layer or smoothed-energy guidance add (p, w); w = 1 leaves
    a term out. With the one term (u, s) this is CFG exactly.
    """
    if not branches:
        raise ValueError("give at least one (branch, weight) term.")
    _same_shape(c, *(b for b, _ in branches))
    out = c
    for b, w in branches:
        out = out + (check_scale(w, "weight") - 1) * (c - b)
    return _rescale(out, c, rescale)


def perturbed_rule(c: Tensor, u: Tensor | None, p: Tensor, scale: float, perturbed_scale: float, *,
                   rescale: float = 0.0) -> Tensor:
    """CFG plus a perturbation term: c + (s - 1)(c - u) + (w - 1)(c - p) (PAG, SLG, SEG; :func:`stack_rule`).

    ``p`` is the conditional prediction of the perturbed model (identity attention, skipped layers, blurred
    attention); ``u=None`` (or s = 1) is the perturbation guider alone, p + w (c - p). Differs from diffusers on
    purpose: with CFG on, diffusers adds ``skip_layer_guidance_scale * (c - p)``, so its scale is our w - 1, while
    alone it uses p + w (c - p) like this function. One convention (w = 1: no perturbation term) serves both here.
    """
    terms = [(p, perturbed_scale)] if u is None else [(u, scale), (p, perturbed_scale)]
    return stack_rule(c, terms, rescale=rescale)


def in_window(step: int, steps: int, start: float = 0.0, stop: float = 1.0) -> bool:
    """diffusers' guidance window: step ``step`` of ``steps`` guides when int(start steps) <= step < int(stop steps)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}.")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < steps:
        raise ValueError(f"step must be an integer in [0, {steps}), got {step!r}.")
    if not (0.0 <= start < 1.0 and start <= stop <= 1.0):
        raise ValueError(f"need 0 <= start < 1 and start <= stop <= 1, got start={start!r}, stop={stop!r}.")
    return int(start * steps) <= step < int(stop * steps)


_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])


def _blur(x: Tensor) -> Tensor:
    """The 5 x 5 binomial blur of the Burt-Adelson pyramid, per channel, borders mirrored (no edge repeat)."""
    kernel = torch.outer(_BINOMIAL, _BINOMIAL).to(x) / 256
    channels = x.shape[1]
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel.expand(channels, 1, 5, 5), groups=channels)


def _down(x: Tensor) -> Tensor:
    return F.interpolate(_blur(x), size=(x.shape[-2] // 2, x.shape[-1] // 2), mode="bilinear", align_corners=False)


def _up(x: Tensor) -> Tensor:
    return _blur(F.interpolate(x, size=(2 * x.shape[-2], 2 * x.shape[-1]), mode="bilinear", align_corners=False))


def laplacian_pyramid(x: Tensor, levels: int) -> list[Tensor]:
    """``levels`` frequency bands of images x (B, C, H, W), the finest first; the last is the coarse remainder.

    Each band is a Gaussian level minus the next level brought back up (blur, halve; double, blur: kornia's
    ``build_laplacian_pyramid``, which diffusers' FDG uses). Sides are mirror-padded to a multiple of
    2^(levels - 1) (to the next power of two, as kornia does, when neither side is one), so 28 x 28 MNIST images
    are analysed at 32 x 32; :func:`from_pyramid` crops back.
    """
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels must be a positive integer, got {levels!r}.")
    if x.ndim != 4:
        raise ValueError(f"a Laplacian pyramid needs images (B, C, H, W), got shape {tuple(x.shape)}.")
    h, w = x.shape[-2:]
    power = lambda n: 1 << (n - 1).bit_length()  # noqa: E731
    stride = 1 << (levels - 1)
    if not (h & (h - 1) == 0 or w & (w - 1) == 0) or h % stride or w % stride:
        x = F.pad(x, (0, power(w) - w, 0, power(h) - h), mode="reflect")
    if min(x.shape[-2:]) // stride < 3:
        raise ValueError(f"{levels} levels halve {h} x {w} images below 3 pixels; use fewer levels.")
    gaussian = [x]
    for _ in range(levels - 1):
        gaussian.append(_down(gaussian[-1]))
    return [g - _up(coarser) for g, coarser in zip(gaussian, gaussian[1:])] + [gaussian[-1]]


def from_pyramid(bands: Sequence[Tensor], size: tuple[int, int] | None = None) -> Tensor:
    """The images a :func:`laplacian_pyramid` came from (exactly, up to float error), cropped to ``size``."""
    image = bands[-1]
    for band in reversed(bands[:-1]):
        image = _up(image) + band
    return image if size is None else image[..., : size[0], : size[1]]


def _fdg_settings(scales, parallel_weights, active) -> tuple[list[float], list[float], list[bool]]:
    scales = [check_scale(s) for s in scales]
    levels = len(scales)
    weights = [1.0] * levels if parallel_weights is None else [check_scale(w, "parallel weight")
                                                               for w in parallel_weights]
    active = [True] * levels if active is None else [bool(a) for a in active]
    if levels < 1 or len(weights) != levels or len(active) != levels:
        raise ValueError(f"give one scale per band (at least one), and as many parallel weights and active flags; got "
                         f"{levels} scales, {len(weights)} weights, {len(active)} flags.")
    return scales, weights, active


def frequency_decoupled_rule(c: Tensor, u: Tensor, scales: Sequence[float], *,
                             parallel_weights: Sequence[float] | None = None, active: Sequence[bool] | None = None,
                             rescale: float = 0.0) -> Tensor:
    """Frequency-decoupled guidance (FDG, Sadat et al. 2025; FrequencyDecoupledGuidance): CFG band by band.

    c and u are split into ``len(scales)`` bands of a :func:`laplacian_pyramid`, the finest first, each band
    guided with its own scale, u_k + s_k (c_k - u_k), and the bands summed back. A low scale on the coarse bands
    keeps the colours and layout of the conditional prediction (and its diversity), a high one on the fine bands
    sharpens detail. ``parallel_weights`` (one per band, default 1) weight the part of each band's difference that
    is parallel to c_k, as APG does; a band with scale 1 or not ``active`` (outside its guidance window, see
    :func:`in_window`) keeps c_k. ``rescale`` is applied to the result in data space. Unlike diffusers 0.42, the
    result has the predictions' own size (diffusers returns the padded size for a side that is not a power of
    two, e.g. 32 x 32 for MNIST's 28 x 28).
    """
    _same_shape(c, u)
    scales, weights, active = _fdg_settings(scales, parallel_weights, active)
    levels = len(scales)
    if not any(a and s != 1 for a, s in zip(active, scales)):
        return c
    bands = []
    for ck, uk, s, w, on in zip(laplacian_pyramid(c, levels), laplacian_pyramid(u, levels), scales, weights, active):
        if not on or s == 1:
            bands.append(ck)
            continue
        d = ck - uk
        if w != 1:
            d_par = parallel_part(d, ck)
            d = w * d_par + (d - d_par)
        bands.append(uk + s * d)
    return _rescale(from_pyramid(bands, tuple(c.shape[-2:])), c, rescale)


def frequency_decoupled(model: Callable, cond: Any, null_cond: Any, scales: Sequence[float], *,
                        parallel_weights: Sequence[float] | None = None) -> EpsFn:
    """FDG as an eps-function: one batched pass, :func:`frequency_decoupled_rule` (lesson 11)."""
    scales, parallel_weights, _ = _fdg_settings(scales, parallel_weights, None)  # refused now, not mid-sampling
    return _two_branch(model, cond, null_cond,
                       lambda c, u: frequency_decoupled_rule(c, u, scales, parallel_weights=parallel_weights))


def _two_branch(model: Callable, cond: Any, null_cond: Any, rule: Callable[[Tensor, Tensor], Tensor]) -> EpsFn:
    predict = batched_predictions(model, [null_cond, cond])

    def eps_fn(x: Tensor, t: Tensor) -> Tensor:
        u, c = predict(x, t)
        return rule(c, u)

    return eps_fn


def tangential_cfg(model: Callable, cond: Any, null_cond: Any, scale: float) -> EpsFn:
    """Tangential CFG as an eps-function: one batched pass, :func:`tangential_rule` (lesson 11)."""
    scale = check_scale(scale)
    return _two_branch(model, cond, null_cond, lambda c, u: tangential_rule(c, u, scale))


def magnitude_aware(model: Callable, cond: Any, null_cond: Any, scale: float, *, alpha: float = 8.0) -> EpsFn:
    """Magnitude-aware guidance as an eps-function: one batched pass, :func:`magnitude_aware_rule` (lesson 11)."""
    scale = check_scale(scale)
    magnitude_aware_rule(torch.ones(1, 1), torch.ones(1, 1), scale, alpha=alpha)  # refuse a bad alpha now
    return _two_branch(model, cond, null_cond, lambda c, u: magnitude_aware_rule(c, u, scale, alpha=alpha))


def independent_condition(model: Callable, labels: Tensor, scale: float, *, num_classes: int,
                          generator: torch.Generator | None = None) -> EpsFn:
    """Independent condition guidance (ICG, Sadat et al. 2024): CFG whose "unconditional" branch is the model
    given a random class, drawn afresh at every step, so a model trained without condition dropout can be guided.

    E over random c' of eps(x, c') approximates eps(x) when the condition carries little information about x_t;
    ``generator`` makes the draws repeatable.
    """
    scale = check_scale(scale)
    labels = torch.as_tensor(labels).reshape(-1).long()
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.unique().tolist()}.")

    def eps_fn(x: Tensor, t: Tensor) -> Tensor:
        y = labels.expand(x.shape[0]) if len(labels) == 1 else labels
        random = torch.randint(0, num_classes, (x.shape[0],), generator=generator).to(y.device)
        u, c = batched_predictions(model, [random, y])(x, t)
        return combine(u, [(c, scale)])

    return eps_fn


def perturbation_guidance(model: Callable, cond: Any, null_cond: Any, scale: float, perturbed_scale: float, *,
                          layers: Sequence[int | str] | str = "all", kind: str = "identity",
                          sigma: float = 2.0) -> EpsFn:
    """PAG (``kind="identity"``), SEG (``"blur"``, with ``sigma``) or SLG (``"skip"``) with CFG, as an eps-function:
    :func:`perturbed_rule` on the conditional, unconditional and perturbed-conditional predictions of one U-Net.

    Cost per step: one batched pass for c and u (none for u when ``scale`` is 1), plus one pass of the perturbed
    model, which cannot share a batch with the others (the perturbation acts on the whole network).
    ``perturbed_scale`` 1 is plain CFG.
    """
    scale, perturbed_scale = check_scale(scale), check_scale(perturbed_scale, "perturbed_scale")
    with perturbed(model, layers, kind, sigma=sigma):  # refuses bad layers, kinds and sigmas now, not mid-sampling
        pass
    pair = batched_predictions(model, [null_cond, cond])
    alone = conditional(model, cond)

    def eps_fn(x: Tensor, t: Tensor) -> Tensor:
        if scale == 1:
            c, u = alone(x, t), None
        else:
            u, c = pair(x, t)
        with perturbed(model, layers, kind, sigma=sigma):
            p = alone(x, t)
        return perturbed_rule(c, u, p, scale, perturbed_scale)

    return eps_fn


def layer_skip_autoguidance(model: Callable, cond: Any, scale: float, *, blocks: Sequence[int | str] | str,
                            dropout: float = 1.0) -> EpsFn:
    """Autoguidance whose "bad" model is the same U-Net with residual ``blocks`` skipped (diffusers' AutoGuidance
    with ``auto_guidance_layers``, which skips transformer blocks): bad + w (good - bad), both conditional.

    ``dropout`` 1 leaves the blocks out; below 1 their residual branch is dropped at random with that probability
    (torch's global generator, as diffusers does). Two passes per step (the damaged network cannot share a batch).
    """
    scale = check_scale(scale)
    with skipped_blocks(model, blocks, dropout=dropout):  # refuses bad blocks and dropouts now, not mid-sampling
        pass
    good = conditional(model, cond)

    def eps_fn(x: Tensor, t: Tensor) -> Tensor:
        c = good(x, t)
        if scale == 1:
            return c
        with skipped_blocks(model, blocks, dropout=dropout):
            bad = good(x, t)
        return cfg_rule(c, bad, scale)

    return eps_fn
