"""The *implement* exercises, one per lesson or more: each names the lesson, the task, the reference (the
library's own function, or a short formula here), the inputs it is checked on, and the hint."""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..clip import contrastive_loss
from ..flow import eps_from_velocity
from ..guidance import combine
from ..nets.controlnet import zero_conv
from ..nets.unet import modulate
from ..variants import parallel_part, rescaled
from .cases import (
    apg_cases,
    cfg_cases,
    cfg_eps_cases,
    classifier_guided_cases,
    compose_cases,
    contrastive_cases,
    cosine_grad_cases,
    ddim_cases,
    euler_cases,
    expand,
    film_cases,
    flow_loss_cases,
    guided_cases,
    noise_aware_cases,
    parallel_cases,
    q_sample_cases,
    rescale_case,
    score_cases,
    velocity_cases,
    zero_conv_cases,
)
from .engine import Exercise

__all__ = ["EXERCISES"]



# ---- references: written in the lesson's notation on plain tensors ------------------------------------------------


def _score_from_eps(eps: Tensor, abar: Tensor) -> Tensor:
    return -eps / (1 - expand(abar, eps)).sqrt()


def _ddim_step(x_t: Tensor, eps: Tensor, abar_t: Tensor, abar_prev: Tensor) -> Tensor:
    a_t, a_prev = expand(abar_t, x_t), expand(abar_prev, x_t)
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps


def _cfg(eps_u: Tensor, eps_c: Tensor, scale: float) -> Tensor:
    return combine(eps_u, [(eps_c, scale)])


def _eps_from_velocity(x_t: Tensor, v: Tensor, t: Tensor) -> Tensor:
    return eps_from_velocity(x_t, t, v)


def _q_sample(x0: Tensor, t: Tensor, eps: Tensor, abar: Tensor) -> Tensor:
    a = expand(abar[t], x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def _noise_aware_loss(classifier, x0: Tensor, y: Tensor, t: Tensor, eps: Tensor, abar: Tensor) -> Tensor:
    return F.cross_entropy(classifier(_q_sample(x0, t, eps, abar), t), y)


def _classifier_guided_eps(eps: Tensor, grad: Tensor, abar: Tensor, scale: float) -> Tensor:
    return eps - scale * (1 - expand(abar, eps)).sqrt() * grad


def _cosine_grad(encoder, text_emb: Tensor, x: Tensor) -> Tensor:
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        cos = F.cosine_similarity(encoder(x), text_emb.expand(len(x), -1), dim=-1)
        return torch.autograd.grad(cos.sum(), x)[0]


def _compose(eps_u: Tensor, eps_list: list, scales: list) -> Tensor:
    return combine(eps_u, list(zip(eps_list, scales)))


def _euler_step(x_t: Tensor, v: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
    return x_t + expand(t_next - t, x_t) * v


def _guided_eps(eps_model, classifier, x_t: Tensor, t: Tensor, y: Tensor, abar_t: Tensor, scale: float) -> Tensor:
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        log_p = torch.log_softmax(classifier(x, t), dim=1).gather(1, y[:, None]).sum()
        grad = torch.autograd.grad(log_p, x)[0]
    return _classifier_guided_eps(eps_model(x_t, t), grad, abar_t, scale)


def _cfg_eps(model, x_t: Tensor, t: Tensor, y: Tensor, null: int, scale: float) -> Tensor:
    labels = torch.cat([y, torch.full_like(y, null)])
    eps_c, eps_u = model(torch.cat([x_t, x_t]), torch.cat([t, t]), labels).chunk(2)
    return _cfg(eps_u, eps_c, scale)


def _apg_combine(c: Tensor, u: Tensor, scale: float, eta: float, r: float | None) -> Tensor:
    d = c - u
    if r is not None:
        d = d * (r / d.flatten(1).norm(dim=1)).clamp(max=1.0).reshape(-1, *([1] * (d.ndim - 1)))
    d_par = parallel_part(d, c)
    return c + (scale - 1) * ((d - d_par) + eta * d_par)


def _flow_matching_loss(v_model, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    x_t = (1 - expand(t, x0)) * x0 + expand(t, x0) * eps
    return (v_model(x_t, t) - (eps - x0)).pow(2).mean()


def _run_cfg_eps(fn: Callable[..., Any], kwargs: dict) -> Any:
    """Call the function with a model that counts its calls: CFG's two predictions come from one batched pass."""
    model = _Counted(kwargs["model"])
    out = fn(**{**kwargs, "model": model})
    if model.rows != [2 * len(kwargs["x_t"])]:
        raise ValueError(f"call the model once, on one batch of 2B = {2 * len(kwargs['x_t'])} rows (the conditional "
                         f"and the unconditional halves together); it was called {len(model.rows)} time(s) on "
                         f"{model.rows} rows")
    return out


def _run_zero_conv(make: Callable[..., Any], kwargs: dict) -> Any:
    """Build the student's layer, then return its output at initialisation, or after one SGD step."""
    layer = make(kwargs["channels"])
    if not isinstance(layer, nn.Module):
        raise TypeError(f"zero_conv(channels) must return a torch.nn.Module (e.g. a torch.nn.Conv2d), got "
                        f"{type(layer).__name__}")
    h, target = kwargs["h"], kwargs["target"]
    if kwargs["sgd_steps"]:
        params = [p for p in layer.parameters() if p.requires_grad]
        if not params:
            raise TypeError("your layer has no trainable parameters, so it can never learn: keep the weight and the "
                            "bias as parameters (zero them, do not freeze or delete them)")
        with torch.enable_grad():
            grads = torch.autograd.grad((layer(h) * target).sum(), params, allow_unused=True)
        with torch.no_grad():
            for p, g in zip(params, grads):
                if g is not None:
                    p -= 1e-3 * g
    with torch.no_grad():
        return layer(h)


class _Counted:
    """A model wrapper that records the rows of every call."""

    def __init__(self, model):
        self.model, self.rows = model, []

    def __call__(self, x: Tensor, *args):
        self.rows.append(len(x))
        return self.model(x, *args)


EXERCISES: dict[str, Exercise] = {e.name: e for e in [
    Exercise("score_from_eps", "01", "score_from_eps(eps, abar): the score of the noisy data from the noise "
             "prediction; abar has one value per sample, shape (B,)", _score_from_eps, score_cases,
             "lesson 01, the score-noise identity: score = -eps / sqrt(1 - abar_t); abar is (B,), so reshape it to "
             "broadcast over the other dimensions"),
    Exercise("ddim_step", "02", "ddim_step(x_t, eps, abar_t, abar_prev): one deterministic DDIM step (eta = 0), "
             "without clipping x0_hat",
             _ddim_step, ddim_cases,
             "lesson 02: x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), then "
             "x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev) eps; the new noise level is abar_prev's (no clipping "
             "of x0_hat here, as clip_x0=False)"),
    Exercise("cfg", "07", "cfg(eps_u, eps_c, scale): classifier-free guidance's combination", _cfg, cfg_cases,
             "lesson 07: eps_u + s (eps_c - eps_u), so that s = 1 is the conditional model and s = 0 the "
             "unconditional one (the (1 + w) eps_c - w eps_u convention uses w = s - 1)"),
    Exercise("parallel_part", "11", "parallel_part(d, c): the part of d parallel to c, per sample", parallel_part,
             parallel_cases,
             "lesson 11 (APG): (<d, c> / <c, c>) c with the sums over every dimension except the batch one, one "
             "coefficient per sample"),
    Exercise("eps_from_velocity", "12", "eps_from_velocity(x_t, v, t): the noise prediction a velocity implies on "
             "the linear path x_t = (1 - t) x0 + t eps", _eps_from_velocity, velocity_cases,
             "lesson 12's table: eps_hat = x_t + (1 - t) v_hat (x0_hat = x_t - t v_hat)"),
    Exercise("q_sample", "01", "q_sample(x0, t, eps, abar): a sample of q(x_t | x_0) for one integer timestep per "
             "image, t of shape (B,), with abar the schedule's whole table of abar_t, shape (T,)", _q_sample,
             q_sample_cases,
             "lesson 01: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with abar_t = abar[t]: index the table by each "
             "image's timestep (not by its position in the batch), then reshape (B,) to broadcast"),
    Exercise("noise_aware_loss", "03", "noise_aware_loss(classifier, x0, y, t, eps, abar): the noise-aware "
             "classifier's training loss on clean images x0 with labels y, noised to timesteps t with noise eps",
             _noise_aware_loss, noise_aware_cases,
             "lesson 03: noise first, x_t = sqrt(abar[t]) x0 + sqrt(1 - abar[t]) eps, then the cross-entropy of "
             "classifier(x_t, t) against y, averaged over the batch (torch.nn.functional.cross_entropy)"),
    Exercise("classifier_guided_eps", "04", "classifier_guided_eps(eps, grad, abar, scale): the eps form of "
             "classifier guidance, with grad = grad_x log p(y | x_t) and one abar_t per image, shape (B,)",
             _classifier_guided_eps, classifier_guided_cases,
             "lesson 04, the eps form (Algorithm 2): eps - s sqrt(1 - abar_t) grad; eps points towards the noise, "
             "so raising log p(y | x_t) means subtracting the gradient"),
    Exercise("contrastive_loss", "05", "contrastive_loss(image_emb, text_emb, logit_scale): CLIP's symmetric loss on "
             "a batch of B matching pairs, (B, D) each, logit_scale = 1 / tau", contrastive_loss, contrastive_cases,
             "lesson 05, section 2: normalise both embeddings, logits = logit_scale * u @ v.T (B x B), then the mean "
             "of the cross-entropy over rows and over columns with targets on the diagonal"),
    Exercise("cosine_grad", "06", "cosine_grad(encoder, text_emb, x): the gradient with respect to each image x of "
             "cos(encoder(x), text_emb), shape of x", _cosine_grad, cosine_grad_cases,
             "lesson 06: one cosine per image (torch.nn.functional.cosine_similarity, dim=-1); call autograd on "
             "their sum, which gives each image its own gradient (a mean would divide every gradient by B); "
             "work on x.detach().requires_grad_() inside torch.enable_grad() (the sampler calls it under no_grad)",
             in_no_grad=True),
    Exercise("compose", "08", "compose(eps_u, eps_list, scales): the composed prediction for several prompts, "
             "one scale each", _compose, compose_cases,
             "lesson 08, section 4: eps_u + sum_i w_i (eps_i - eps_u), one full term per prompt (not an average); "
             "with one prompt it is CFG"),
    Exercise("rescale", "09", "rescale(guided, cond, phi): the rescaled x0_hat, phi of guided scaled to cond's "
             "standard deviation (per image) blended with 1 - phi of guided", rescaled,
             lambda: [("a batch of x0_hat of very different contrast", rescale_case(1.0)),
                      ("phi = 0.7, the lesson's setting", rescale_case(0.7))],
             "lesson 09 (Lin et al. 2024): std over every dimension but the batch one, one ratio std(cond) / "
             "std(guided) per image, then phi * guided * ratio + (1 - phi) * guided"),
    Exercise("film", "10", "film(h, scale, shift): FiLM modulation of features h (B, C, H, W) by a scale and a shift "
             "per sample and channel, (B, C) each, in the course's U-Net form", modulate, film_cases,
             "lesson 10: h * (1 + scale) + shift, with scale and shift reshaped to (B, C, 1, 1) so that they act on "
             "channels (zero scale and shift leave h as it is)"),
    Exercise("zero_conv", "10", "zero_conv(channels): a module (channels -> channels) that outputs zero at "
             "initialisation and still learns", zero_conv, zero_conv_cases,
             "lesson 10, section 3: torch.nn.Conv2d(channels, channels, 1) with its weight and its bias set to zero "
             "(torch.nn.init.zeros_); a 1x1 kernel, so one step moves each output by its own pixel's features",
             run=_run_zero_conv),
    Exercise("euler_step", "12", "euler_step(x_t, v, t, t_next): one Euler step of dx/dt = v from time t to t_next "
             "< t, one time per image", _euler_step, euler_cases,
             "lesson 12: x_next = x_t + (t_next - t) v; the step goes from noise (t = 1) towards data (t = 0), so "
             "t_next - t is negative"),
    Exercise("guided_eps", "04", "guided_eps(eps_model, classifier, x_t, t, y, abar_t, scale): the classifier-guided "
             "noise prediction, its gradient included: grad_x log p(y | x_t) by autograd, then the eps form",
             _guided_eps, guided_cases,
             "lesson 04: log p(y | x_t) is log_softmax(classifier(x_t, t), dim=1) at each image's own class (gather); "
             "take autograd.grad of its sum over the batch (each image keeps its own gradient; a mean would divide "
             "it by B) with respect to x_t.detach().requires_grad_(), inside torch.enable_grad() (the sampler calls "
             "this under no_grad), then eps_model(x_t, t) - s sqrt(1 - abar_t) grad", in_no_grad=True),
    Exercise("cfg_eps", "07", "cfg_eps(model, x_t, t, y, null, scale): classifier-free guidance from one batched "
             "pass, model(x, t, labels) on the conditional and the unconditional halves together", _cfg_eps,
             cfg_eps_cases,
             "lesson 07, section 1: stack x_t twice (torch.cat), t twice, and the labels [y, null, ..., null] "
             "(torch.full_like(y, null)), call the model once, split its output with .chunk(2) (the first half is "
             "the conditional prediction), then eps_u + s (eps_c - eps_u)", run=_run_cfg_eps),
    Exercise("apg_combine", "11", "apg_combine(c, u, scale, eta, r): adaptive projected guidance's combination, "
             "per image: the difference capped at norm r (None: no cap), split along c, its parallel part weighted "
             "by eta", _apg_combine, apg_cases,
             "lesson 11, the method table at the top (Sadat et al. 2024): d = c - u; if r is given, d times min(1, r / ||d||) with the "
             "norm over every dimension but the batch one; d_par = (<d, c> / <c, c>) c per image; then the paper's "
             "c + (s - 1)(d - d_par + eta d_par), not diffusers' default u + s (...)"),
    Exercise("flow_matching_loss", "12", "flow_matching_loss(v_model, x0, eps, t): the conditional flow-matching "
             "loss on the linear path for given noise eps and one time per image t, shape (B,)",
             _flow_matching_loss, flow_loss_cases,
             "lesson 12, section 1: t = 0 is data and t = 1 noise, so x_t = (1 - t) x0 + t eps and the target is "
             "its velocity d x_t / dt = eps - x0; the loss is the mean over every element of (v_model(x_t, t) - "
             "target)^2"),
]}

# the library functions each exercise asks the student to write (besides its reference): calling one is refused
_SHORTCUTS = {
    "score_from_eps": ("lessonlib.diffusion.score_from_eps",),
    "ddim_step": ("lessonlib.samplers.ddim_step", "lessonlib.diffusion.x0_from_eps", "lessonlib.diffusion.eps_from_x0"),
    "cfg": ("lessonlib.guidance.combine", "lessonlib.guidance.cfg", "lessonlib.guiders.cfg_rule"),
    "parallel_part": (),
    "eps_from_velocity": ("lessonlib.flow.eps_from_velocity",),
    "q_sample": ("lessonlib.diffusion.q_sample", "lessonlib.flow.interpolate"),
    "noise_aware_loss": ("lessonlib.diffusion.q_sample", "lessonlib.training.classifier_loss_fn"),
    "classifier_guided_eps": ("lessonlib.guidance.grad_guidance",),
    "contrastive_loss": (),
    "cosine_grad": ("lessonlib.guidance.input_grad", "lessonlib.guidance.clip_grad", "lessonlib.guidance._cosine_grad"),
    "compose": ("lessonlib.guidance.combine", "lessonlib.guidance.compose", "lessonlib.guiders.stack_rule"),
    "rescale": ("lessonlib.guiders._rescale",),
    "film": (),
    "zero_conv": (),
    "euler_step": (),
    "guided_eps": ("lessonlib.guidance.grad_guidance", "lessonlib.guidance.classifier_grad",
                   "lessonlib.guidance.input_grad", "lessonlib.exercises.implement._classifier_guided_eps"),
    "cfg_eps": ("lessonlib.guidance.batched_cfg", "lessonlib.guidance.batched_predictions",
                "lessonlib.guidance.batched_compose", "lessonlib.guidance.combine", "lessonlib.guidance.cfg",
                "lessonlib.guiders.cfg_rule", "lessonlib.exercises.implement._cfg"),
    "apg_combine": ("lessonlib.variants.parallel_part", "lessonlib.variants.apg"),
    "flow_matching_loss": ("lessonlib.flow.flow_matching_loss", "lessonlib.flow.interpolate",
                           "lessonlib.flow.velocity_target", "lessonlib.training.flow_loss_fn"),
}
EXERCISES = {name: replace(e, shortcuts=_SHORTCUTS[name]) for name, e in EXERCISES.items()}
