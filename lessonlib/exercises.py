"""Exercises a student does and a machine checks (issue 20): ``check(name, answer)`` and ``check_prediction``.

Two kinds:

- *implement*: the student writes a small function the lesson used from ``lessonlib``; :func:`check` runs it
  against the reference on random and edge-case inputs (the lesson's shapes and dtypes) and prints what failed,
  expected against got, and a hint that points at the lesson's equation. A stub from :func:`stub` raises
  ``NotImplementedError`` with the exercise's task, and :func:`check` says so instead of failing obscurely.
- *predict, then measure*: the student writes a prediction before running a sweep; :func:`check_prediction`
  compares it with the number the notebook measured and explains the gap.

Neither ever raises an AssertionError at the student: both return a :class:`CheckResult` (``passed``,
``message``) and print the message. Reference solutions are the library's own functions (``EXERCISES[name]
.reference``); the notebooks' solution cells are tagged ``solution`` so that a student version can drop them.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import inspect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .clip import contrastive_loss
from .flow import eps_from_velocity
from .guidance import combine
from .nets.controlnet import zero_conv
from .nets.unet import modulate
from .schedules import linear_schedule
from .variants import parallel_part, rescaled

__all__ = ["Exercise", "CheckResult", "EXERCISES", "check", "stub", "Prediction", "PREDICTIONS",
           "check_prediction", "student_version", "main"]


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed


@dataclass(frozen=True)
class Exercise:
    """One *implement* exercise: the task, the reference, the inputs it is checked on, and the hint."""

    name: str
    lesson: str
    task: str  # what to write, shown by the stub
    reference: Callable[..., Tensor]
    cases: Callable[[], list[tuple[str, dict]]]  # (description, keyword arguments)
    hint: str
    atol: float = 1e-5
    rtol: float = 1e-4
    # how a function is called on one case's keyword arguments; None: answer(**kwargs). An exercise whose answer
    # is not a tensor function (e.g. one that builds a module) turns it into a tensor here.
    run: Callable[[Callable[..., Any], dict], Any] | None = None
    # call the function inside torch.no_grad(), where the lesson calls it (a sampler's loop)
    in_no_grad: bool = False

    def call(self, fn: Callable[..., Any], kwargs: dict) -> Any:
        with torch.no_grad() if self.in_no_grad else contextlib.nullcontext():
            return fn(**kwargs) if self.run is None else self.run(fn, kwargs)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- references: written in the lesson's notation on plain tensors ------------------------------------------------

def _expand(a: Tensor, like: Tensor) -> Tensor:
    """(B,) per-sample values broadcast over a (B, ...) tensor."""
    return a.reshape(-1, *([1] * (like.ndim - 1))).to(like)


def _score_from_eps(eps: Tensor, abar: Tensor) -> Tensor:
    return -eps / (1 - _expand(abar, eps)).sqrt()


def _ddim_step(x_t: Tensor, eps: Tensor, abar_t: Tensor, abar_prev: Tensor) -> Tensor:
    a_t, a_prev = _expand(abar_t, x_t), _expand(abar_prev, x_t)
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps


def _cfg(eps_u: Tensor, eps_c: Tensor, scale: float) -> Tensor:
    return combine(eps_u, [(eps_c, scale)])


def _eps_from_velocity(x_t: Tensor, v: Tensor, t: Tensor) -> Tensor:
    return eps_from_velocity(x_t, t, v)


def _q_sample(x0: Tensor, t: Tensor, eps: Tensor, abar: Tensor) -> Tensor:
    a = _expand(abar[t], x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def _noise_aware_loss(classifier, x0: Tensor, y: Tensor, t: Tensor, eps: Tensor, abar: Tensor) -> Tensor:
    return F.cross_entropy(classifier(_q_sample(x0, t, eps, abar), t), y)


def _classifier_guided_eps(eps: Tensor, grad: Tensor, abar: Tensor, scale: float) -> Tensor:
    return eps - scale * (1 - _expand(abar, eps)).sqrt() * grad


def _cosine_grad(encoder, text_emb: Tensor, x: Tensor) -> Tensor:
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        cos = F.cosine_similarity(encoder(x), text_emb.expand(len(x), -1), dim=-1)
        return torch.autograd.grad(cos.sum(), x)[0]


def _compose(eps_u: Tensor, eps_list: list, scales: list) -> Tensor:
    return combine(eps_u, list(zip(eps_list, scales)))


def _euler_step(x_t: Tensor, v: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
    return x_t + _expand(t_next - t, x_t) * v


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


class _ToyClassifier:
    """A fixed logistic-regression 'classifier(x_t, t) -> logits' on 28x28 images whose logits depend on t."""

    def __init__(self):
        g = _gen(10)
        self.w, self.b = torch.randn(784, 10, generator=g) / 28, torch.randn(10, generator=g)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return x.flatten(1) @ self.w + (t.float() / 1000)[:, None] * self.b


class _ToyEncoder:
    """A fixed image encoder x -> (B, 16) embedding, smooth enough that its cosine has an interesting gradient."""

    def __init__(self):
        g = _gen(11)
        self.w1, self.w2 = torch.randn(784, 32, generator=g) / 28, torch.randn(32, 16, generator=g) / 6

    def __call__(self, x: Tensor) -> Tensor:
        return torch.tanh(x.flatten(1) @ self.w1) @ self.w2


# ---- the inputs each is checked on ----------------------------------------------------------------------------------

def _score_cases():
    g = _gen(0)
    return [("a batch of 2-D toy points (B, 2), abar in (0, 1)",
             {"eps": torch.randn(6, 2, generator=g), "abar": torch.rand(6, generator=g) * 0.98 + 0.01}),
            ("MNIST-shaped (B, 1, 28, 28) with one abar per image", {"eps": torch.randn(3, 1, 28, 28, generator=g),
                                                                  "abar": torch.tensor([0.05, 0.5, 0.95])}),
            ("almost clean, abar = 0.9999 (the score is large)", {"eps": torch.randn(2, 2, generator=g),
                                                                  "abar": torch.tensor([0.9999, 0.9999])})]


def _ddim_cases():
    g = _gen(1)
    x, e = torch.randn(4, 1, 28, 28, generator=g), torch.randn(4, 1, 28, 28, generator=g)
    return [("a middle step, abar_t = 0.3 -> abar_prev = 0.5", {"x_t": x, "eps": e, "abar_t": torch.full((4,), 0.3),
                                                                "abar_prev": torch.full((4,), 0.5)}),
            ("a different step per image", {"x_t": x, "eps": e, "abar_t": torch.tensor([0.01, 0.2, 0.6, 0.9]),
                                            "abar_prev": torch.tensor([0.05, 0.4, 0.8, 0.99])}),
            ("the last step, to the clean image (abar_prev = 1)", {"x_t": x, "eps": e,
                                                                    "abar_t": torch.full((4,), 0.9),
                                                                    "abar_prev": torch.ones(4)})]


def _cfg_cases():
    g = _gen(2)
    u, c = torch.randn(3, 1, 28, 28, generator=g), torch.randn(3, 1, 28, 28, generator=g)
    return [(f"scale {s:g}", {"eps_u": u, "eps_c": c, "scale": s}) for s in (3.0, 1.0, 0.0, 7.5)]


def _parallel_cases():
    g = _gen(3)
    d, c = torch.randn(4, 1, 28, 28, generator=g), torch.randn(4, 1, 28, 28, generator=g)
    return [("a batch of MNIST-shaped x0 predictions", {"d": d, "c": c}),
            ("images of very different brightness (per-image projections)", {"d": d, "c": c * torch.tensor(
                [0.1, 1.0, 10.0, 100.0]).reshape(4, 1, 1, 1)}),
            ("d already parallel to c", {"d": 2.5 * c, "c": c})]


def _velocity_cases():
    g = _gen(4)
    x, v = torch.randn(3, 1, 28, 28, generator=g), torch.randn(3, 1, 28, 28, generator=g)
    return [("one t per image", {"x_t": x, "v": v, "t": torch.tensor([0.1, 0.5, 0.9])}),
            ("pure noise, t = 1 (then eps is x_t itself)", {"x_t": x, "v": v, "t": torch.ones(3)})]


def _q_sample_cases():
    g = _gen(5)
    abar = linear_schedule(1000).abar.float()
    x0, eps = torch.randn(3, 1, 28, 28, generator=g), torch.randn(3, 1, 28, 28, generator=g)
    return [("MNIST-shaped, every image at its own timestep, t = [999, 0, 500]",
             {"x0": x0, "t": torch.tensor([999, 0, 500]), "eps": eps, "abar": abar}),
            ("2-D toy points with a short schedule (T = 12), timesteps out of batch order",
             {"x0": torch.randn(5, 2, generator=g), "t": torch.tensor([10, 3, 7, 0, 11]),
              "eps": torch.randn(5, 2, generator=g), "abar": linear_schedule(12).abar.float()}),
            ("every image at t = 250", {"x0": x0, "t": torch.full((3,), 250), "eps": eps, "abar": abar})]


def _noise_aware_cases():
    g = _gen(6)
    abar = linear_schedule(1000).abar.float()
    x0 = torch.rand(6, 1, 28, 28, generator=g) * 2 - 1
    eps = torch.randn(6, 1, 28, 28, generator=g)
    y = torch.tensor([3, 1, 4, 1, 5, 9])
    return [("a batch of six images, each at its own t", {"classifier": _ToyClassifier(), "x0": x0, "y": y,
                                                          "t": torch.tensor([600, 10, 999, 250, 0, 400]),
                                                          "eps": eps, "abar": abar}),
            ("all six at t = 0 (clean)", {"classifier": _ToyClassifier(), "x0": x0, "y": y,
                                          "t": torch.zeros(6, dtype=torch.long), "eps": eps, "abar": abar})]


def _classifier_guided_cases():
    g = _gen(7)
    e, grad = torch.randn(4, 1, 28, 28, generator=g), torch.randn(4, 1, 28, 28, generator=g)
    abar = torch.tensor([0.01, 0.3, 0.7, 0.99])
    return [(f"scale {s:g}, a different abar_t per image", {"eps": e, "grad": grad, "abar": abar, "scale": s})
            for s in (3.0, 0.0, -4.0)]


def _contrastive_cases():
    g = _gen(8)
    img, txt = torch.randn(8, 16, generator=g) * 3, torch.randn(8, 16, generator=g)
    return [("8 random, unnormalised pairs, 1 / tau = 20", {"image_emb": img, "text_emb": txt,
                                                            "logit_scale": torch.tensor(20.0)}),
            ("8 nearly matching pairs, 1 / tau = 100", {"image_emb": img, "text_emb": 5 * img + txt,
                                                        "logit_scale": torch.tensor(100.0)}),
            ("3 pairs whose texts are not in the images' order, 1 / tau = 1",
             {"image_emb": img[:3], "text_emb": txt[[2, 0, 1]] + img[:3], "logit_scale": torch.tensor(1.0)})]


def _cosine_grad_cases():
    g = _gen(9)
    x = torch.rand(4, 1, 28, 28, generator=g) * 2 - 1
    return [("one prompt embedding (16,) for all four images",
             {"encoder": _ToyEncoder(), "text_emb": torch.randn(16, generator=g), "x": x}),
            ("one prompt embedding per image, (4, 16)",
             {"encoder": _ToyEncoder(), "text_emb": torch.randn(4, 16, generator=g), "x": x})]


def _compose_cases():
    g = _gen(12)
    u = torch.randn(3, 1, 28, 28, generator=g)
    e1, e2 = torch.randn(3, 1, 28, 28, generator=g), torch.randn(3, 1, 28, 28, generator=g)
    return [("one prompt at scale 3 (plain CFG)", {"eps_u": u, "eps_list": [e1], "scales": [3.0]}),
            ("two prompts at scale 3 each", {"eps_u": u, "eps_list": [e1, e2], "scales": [3.0, 3.0]}),
            ("a prompt at 4 and one pushed away at -1.5", {"eps_u": u, "eps_list": [e1, e2], "scales": [4.0, -1.5]})]


def _film_cases():
    g = _gen(13)
    h = torch.randn(2, 8, 5, 5, generator=g)
    return [("h (2, 8, 5, 5) with one scale and shift per sample and channel (2, 8)",
             {"h": h, "scale": torch.randn(2, 8, generator=g), "shift": torch.randn(2, 8, generator=g)}),
            ("scale and shift zero (FiLM is then the identity; AdaLN-zero starts its blocks here)",
             {"h": h, "scale": torch.zeros(2, 8), "shift": torch.zeros(2, 8)}),
            ("a square map whose channels equal its side, h (2, 5, 5, 5)",
             {"h": h[:, :5], "scale": torch.randn(2, 5, generator=g), "shift": torch.randn(2, 5, generator=g)})]


def _zero_conv_cases():
    g = _gen(14)
    h, target = torch.randn(2, 16, 7, 7, generator=g), torch.randn(2, 16, 7, 7, generator=g)
    return [("16 channels at initialisation: the output", {"channels": 16, "h": h, "target": target,
                                                           "sgd_steps": 0}),
            ("16 channels after one SGD step (lr 1e-3) on sum(output * target)",
             {"channels": 16, "h": h, "target": target, "sgd_steps": 1})]


def _rescale_case(phi: float) -> dict:
    g = _gen(16)
    cond = torch.randn(3, 1, 28, 28, generator=g) * torch.tensor([0.5, 1.0, 2.0]).reshape(3, 1, 1, 1)
    guided = 3 * cond + torch.randn(3, 1, 28, 28, generator=g) * torch.tensor([1.0, 4.0, 0.2]).reshape(3, 1, 1, 1)
    return {"guided": guided, "cond": cond, "phi": phi}


def _euler_cases():
    g = _gen(15)
    x, v = torch.randn(3, 1, 28, 28, generator=g), torch.randn(3, 1, 28, 28, generator=g)
    return [("a step from t = 0.6 to 0.5", {"x_t": x, "v": v, "t": torch.full((3,), 0.6),
                                            "t_next": torch.full((3,), 0.5)}),
            ("a different step per image, the last to t = 0", {"x_t": x, "v": v, "t": torch.tensor([1.0, 0.3, 0.05]),
                                                               "t_next": torch.tensor([0.9, 0.2, 0.0])})]


EXERCISES: dict[str, Exercise] = {e.name: e for e in [
    Exercise("score_from_eps", "01", "score_from_eps(eps, abar): the score of the noisy data from the noise "
             "prediction; abar has one value per sample, shape (B,)", _score_from_eps, _score_cases,
             "lesson 01, the score-noise identity: score = -eps / sqrt(1 - abar_t); abar is (B,), so reshape it to "
             "broadcast over the other dimensions"),
    Exercise("ddim_step", "02", "ddim_step(x_t, eps, abar_t, abar_prev): one deterministic DDIM step (eta = 0), "
             "without clipping x0_hat",
             _ddim_step, _ddim_cases,
             "lesson 02: x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), then "
             "x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev) eps; the new noise level is abar_prev's (no clipping "
             "of x0_hat here, as clip_x0=False)"),
    Exercise("cfg", "07", "cfg(eps_u, eps_c, scale): classifier-free guidance's combination", _cfg, _cfg_cases,
             "lesson 07: eps_u + s (eps_c - eps_u), so that s = 1 is the conditional model and s = 0 the "
             "unconditional one (the (1 + w) eps_c - w eps_u convention uses w = s - 1)"),
    Exercise("parallel_part", "11", "parallel_part(d, c): the part of d parallel to c, per sample", parallel_part,
             _parallel_cases,
             "lesson 11 (APG): (<d, c> / <c, c>) c with the sums over every dimension except the batch one, one "
             "coefficient per sample"),
    Exercise("eps_from_velocity", "12", "eps_from_velocity(x_t, v, t): the noise prediction a velocity implies on "
             "the linear path x_t = (1 - t) x0 + t eps", _eps_from_velocity, _velocity_cases,
             "lesson 12's table: eps_hat = x_t + (1 - t) v_hat (x0_hat = x_t - t v_hat)"),
    Exercise("q_sample", "01", "q_sample(x0, t, eps, abar): a sample of q(x_t | x_0) for one integer timestep per "
             "image, t of shape (B,), with abar the schedule's whole table of abar_t, shape (T,)", _q_sample,
             _q_sample_cases,
             "lesson 01: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with abar_t = abar[t]: index the table by each "
             "image's timestep (not by its position in the batch), then reshape (B,) to broadcast"),
    Exercise("noise_aware_loss", "03", "noise_aware_loss(classifier, x0, y, t, eps, abar): the noise-aware "
             "classifier's training loss on clean images x0 with labels y, noised to timesteps t with noise eps",
             _noise_aware_loss, _noise_aware_cases,
             "lesson 03: noise first, x_t = sqrt(abar[t]) x0 + sqrt(1 - abar[t]) eps, then the cross-entropy of "
             "classifier(x_t, t) against y, averaged over the batch (torch.nn.functional.cross_entropy)"),
    Exercise("classifier_guided_eps", "04", "classifier_guided_eps(eps, grad, abar, scale): the eps form of "
             "classifier guidance, with grad = grad_x log p(y | x_t) and one abar_t per image, shape (B,)",
             _classifier_guided_eps, _classifier_guided_cases,
             "lesson 04, the eps form (Algorithm 2): eps - s sqrt(1 - abar_t) grad; eps points towards the noise, "
             "so raising log p(y | x_t) means subtracting the gradient"),
    Exercise("contrastive_loss", "05", "contrastive_loss(image_emb, text_emb, logit_scale): CLIP's symmetric loss on "
             "a batch of B matching pairs, (B, D) each, logit_scale = 1 / tau", contrastive_loss, _contrastive_cases,
             "lesson 05, section 2: normalise both embeddings, logits = logit_scale * u @ v.T (B x B), then the mean "
             "of the cross-entropy over rows and over columns with targets on the diagonal"),
    Exercise("cosine_grad", "06", "cosine_grad(encoder, text_emb, x): the gradient with respect to each image x of "
             "cos(encoder(x), text_emb), shape of x", _cosine_grad, _cosine_grad_cases,
             "lesson 06: one cosine per image (torch.nn.functional.cosine_similarity, dim=-1); call autograd on "
             "their sum, which gives each image its own gradient (a mean would divide every gradient by B); "
             "work on x.detach().requires_grad_() inside torch.enable_grad() (the sampler calls it under no_grad)",
             in_no_grad=True),
    Exercise("compose", "08", "compose(eps_u, eps_list, scales): the composed prediction for several prompts, "
             "one scale each", _compose, _compose_cases,
             "lesson 08, section 4: eps_u + sum_i w_i (eps_i - eps_u), one full term per prompt (not an average); "
             "with one prompt it is CFG"),
    Exercise("rescale", "09", "rescale(guided, cond, phi): the rescaled x0_hat, phi of guided scaled to cond's "
             "standard deviation (per image) blended with 1 - phi of guided", rescaled,
             lambda: [("a batch of x0_hat of very different contrast", _rescale_case(1.0)),
                      ("phi = 0.7, the lesson's setting", _rescale_case(0.7))],
             "lesson 09 (Lin et al. 2024): std over every dimension but the batch one, one ratio std(cond) / "
             "std(guided) per image, then phi * guided * ratio + (1 - phi) * guided"),
    Exercise("film", "10", "film(h, scale, shift): FiLM modulation of features h (B, C, H, W) by a scale and a shift "
             "per sample and channel, (B, C) each, in the course's U-Net form", modulate, _film_cases,
             "lesson 10: h * (1 + scale) + shift, with scale and shift reshaped to (B, C, 1, 1) so that they act on "
             "channels (zero scale and shift leave h as it is)"),
    Exercise("zero_conv", "10", "zero_conv(channels): a module (channels -> channels) that outputs zero at "
             "initialisation and still learns", zero_conv, _zero_conv_cases,
             "lesson 10, section 3: torch.nn.Conv2d(channels, channels, 1) with its weight and its bias set to zero "
             "(torch.nn.init.zeros_); a 1x1 kernel, so one step moves each output by its own pixel's features",
             run=_run_zero_conv),
    Exercise("euler_step", "12", "euler_step(x_t, v, t, t_next): one Euler step of dx/dt = v from time t to t_next "
             "< t, one time per image", _euler_step, _euler_cases,
             "lesson 12: x_next = x_t + (t_next - t) v; the step goes from noise (t = 1) towards data (t = 0), so "
             "t_next - t is negative"),
]}


def stub(name: str) -> Callable[..., Any]:
    """The function a student starts from: it raises NotImplementedError with the exercise's task."""
    exercise = _exercise(name)

    def not_yet(*args, **kwargs):
        raise NotImplementedError(f"exercise '{name}' (lesson {exercise.lesson}): write {exercise.task}.")
    return not_yet


def _exercise(name: str) -> Exercise:
    if name not in EXERCISES:
        raise ValueError(f"no exercise named {name!r}; the exercises are {sorted(EXERCISES)}.")
    return EXERCISES[name]


def _describe(x: Any) -> str:
    if torch.is_tensor(x):
        flat = x.detach().flatten().double()
        head = ", ".join(f"{v:.4g}" for v in flat[:3].tolist())
        return f"tensor of shape {tuple(x.shape)}, dtype {x.dtype}, first values [{head}{', ...' if len(flat) > 3 else ''}]"
    return f"{type(x).__name__} {x!r}"[:200]


def _report(passed: bool, message: str) -> CheckResult:
    print(message)
    return CheckResult(passed, message)


def _type_error_message(name: str, exercise: Exercise, answer: Callable[..., Any], exc: TypeError,
                        description: str) -> str:
    """A TypeError from calling the function with the stub's argument names says so; any other, like an exception."""
    expected = list(exercise.cases()[0][1]) if exercise.run is None else None
    try:
        theirs = list(inspect.signature(answer).parameters)
    except (TypeError, ValueError):
        theirs = None
    if expected is not None and theirs is not None and theirs != expected:
        return (f"'{name}' takes the arguments ({', '.join(theirs)}), but the checker calls it with the stub's names "
                f"as keywords: ({', '.join(expected)}). Keep the stub's first line as it is.")
    return f"'{name}' raised TypeError: {exc}\n  on the input: {description}\n  hint: {exercise.hint}"


def check(name: str, answer: Callable[..., Any]) -> CheckResult:
    """Run the student's function on the exercise's inputs against the reference; print and return the verdict."""
    exercise = _exercise(name)
    if not callable(answer):
        return _report(False, f"'{name}': pass your function itself (e.g. check('{name}', {name})), "
                              f"not {type(answer).__name__}.")
    cases = exercise.cases()
    for description, kwargs in cases:
        inputs = {k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()}
        expected = exercise.call(exercise.reference, kwargs)
        try:
            got = exercise.call(answer, inputs)
        except NotImplementedError:
            return _report(False, f"'{name}' is not written yet: replace the `raise NotImplementedError` in its cell "
                                  f"with your code ({exercise.task}).")
        except TypeError as exc:
            return _report(False, _type_error_message(name, exercise, answer, exc, description))
        except Exception as exc:  # the student's code failed: say on what, and how
            return _report(False, f"'{name}' raised {type(exc).__name__}: {exc}\n  on the input: {description}\n"
                                  f"  hint: {exercise.hint}")
        if any(torch.is_tensor(v) and (v.requires_grad or v.grad is not None) for v in inputs.values()):
            return _report(False, f"'{name}' turned on requires_grad (or left a .grad) on the caller's tensor on: "
                                  f"{description}; take the gradient with respect to x.detach().requires_grad_(), a "
                                  "new tensor, so that the sampler's own tensors stay untouched.")
        if any(torch.is_tensor(v) and not torch.equal(v, kwargs[k]) for k, v in inputs.items()):
            return _report(False, f"'{name}' changed one of its inputs in place on: {description}; compute a new "
                                  "tensor instead (no +=, no .mul_() on the arguments).")
        if not torch.is_tensor(got):
            return _report(False, f"'{name}' returned {_describe(got)} on: {description}; it should return a tensor "
                                  f"like {_describe(expected)}.")
        if got.shape != expected.shape:
            return _report(False, f"'{name}' returned shape {tuple(got.shape)} on: {description}; expected "
                                  f"{tuple(expected.shape)}.\n  hint: {exercise.hint}")
        if got.dtype != expected.dtype:
            return _report(False, f"'{name}' returned dtype {got.dtype} on: {description}; expected {expected.dtype} "
                                  "(keep the inputs' dtype).")
        if not torch.allclose(got, expected, atol=exercise.atol, rtol=exercise.rtol):
            worst = int((got - expected).abs().flatten().argmax())
            return _report(False, f"'{name}' is wrong on: {description}\n  expected {_describe(expected)}\n"
                                  f"  got      {_describe(got)}\n  largest difference at flat index {worst}: "
                                  f"expected {expected.flatten()[worst].item():.6g}, got {got.flatten()[worst].item():.6g}"
                                  f"\n  hint: {exercise.hint}")
    return _report(True, f"'{name}' is correct on all {len(cases)} inputs ({'; '.join(d for d, _ in cases)}).")


# ---- predict, then measure --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prediction:
    """A *predict, then measure* exercise: a question, and how to judge a numeric answer against the measurement."""

    name: str
    lesson: str
    question: str
    why: str  # the explanation shown with the verdict
    relative_tolerance: float = 0.25
    choices: tuple[str, ...] = field(default_factory=tuple)  # for a choice: the allowed answers
    absolute_tolerance: float | None = None  # for a number: pass within this distance instead (e.g. an accuracy)


PREDICTIONS: dict[str, Prediction] = {p.name: p for p in [
    Prediction("cfg_diversity_trend", "07", "As the CFG scale goes from 1 to 5, does within-class diversity go "
               "'up', 'down' or stay 'flat' (within 5% of its value at s = 1)?", "guidance pushes along the implicit "
               "classifier's gradient (s - 1) times harder than the conditional model does; it aims at "
               "p(x | c) p(c | x)^(s - 1) (lesson 01: without sampling it exactly) and sharpens each class towards "
               "the samples the classifier is surest about, so the samples of a class resemble each other more",
               choices=("up", "down", "flat")),
    Prediction("cfgpp_scale_at_40_steps", "11", "CFG++ with lambda = 0.6 and 40 DDIM steps equals CFG with a "
               "per-step scale; what is its largest value?", "w = lambda sbar_hi / (sbar_hi - sbar_lo) grows as the "
               "steps get shorter, so the same lambda guides harder with more steps"),
    Prediction("ddim_or_ddpm_at_10_steps", "02", "With 10 sampling steps, which gives the lower FID_judge on this "
               "model: 'ddim', 'ddpm', or is it a 'tie' (95% intervals overlapping)?", "at few steps every step "
               "makes a large error; DDIM follows the ODE deterministically, so its errors carry along the path, "
               "while DDPM's fresh noise partly washes earlier errors out but needs small steps to be accurate. "
               "Which effect wins depends on the model and the step count, so it is measured, not assumed",
               choices=("ddim", "ddpm", "tie")),
    Prediction("clean_accuracy_at_t300", "03", "What test accuracy (0 to 1) does the classifier trained only on "
               "clean digits reach on x_t at t = 300?", "the clean classifier never saw noise; once the noise is "
               "as strong as the ink, its inputs look like nothing it was trained on and it gives (almost) every "
               "noisy digit the same answer, so its accuracy falls to about that class's share, near chance (0.1)",
               absolute_tolerance=0.1),
    Prediction("adherence_at_scale_1", "04", "What share of classifier-guided samples at s = 1 (the Bayes-correct "
               "conditional if the models were exact) does the judge assign to the requested class?",
               "s = 1 samples p(x | y) only if the unconditional model and the classifier were exact; with small "
               "models the classifier's gradient is too weak a push at s = 1, which is why Dhariwal & Nichol used "
               "scales well above 1", absolute_tolerance=0.15),
    Prediction("clip_transfer_accuracy", "05", "What zero-shot accuracy (0 to 1) does the small CLIP reach on the "
               "1,797 scikit-learn digits, which come from other writers, were scanned at 8x8 and are upsampled?",
               "the images differ from MNIST in blur, thickness and centring, a distribution shift nothing in "
               "training prepared for; the digit shapes still carry over, so it keeps much of its MNIST accuracy "
               "but not all", absolute_tolerance=0.1),
    Prediction("clip_adherence_past_best", "06", "With the noise-aware tower, as the CLIP-guidance scale goes from "
               "100 to 1,000, does digit adherence go 'up', 'down' or stay 'flat' (within 0.05)?", "past a point the "
               "gradient of the noise-aware tower's cosine dominates the model's eps and pushes the samples towards "
               "whatever that tower scores highly, not towards digits: they leave the data and the judge stops "
               "recognising them",
               choices=("up", "down", "flat")),
    Prediction("attention_memory_ratio", "08", "At 64x64 positions, how many times more bytes does "
               "self-attention's probability matrix take than cross-attention's to this model's L text tokens?",
               "self-attention's matrix is N x N with N = H W = 4,096 positions, cross-attention's N x L, so the "
               "ratio is N / L; self-attention's memory grows with N squared, which is why big models self-attend "
               "only at low resolutions (Stable Diffusion: a 64x64 latent, not 512x512 pixels)"),
    Prediction("perpendicular_helps_at_8", "09", "Does dropping the part of d parallel to c (the perpendicular "
               "variant, on eps) lower FID_judge at s = 8 beyond the 95% intervals: 'yes' or 'no'?",
               "the variant changes the guided prediction by (s - 1) times d's parallel part only, and on eps that "
               "part is a small share of d along the trajectory (section 3 prints the ratio); at N = 100 "
               "a change that small cannot separate intervals several units wide", choices=("yes", "no")),
]}


def check_prediction(name: str, answer: Any, measured: Any) -> CheckResult:
    """Compare a prediction written before the measurement with what the notebook measured; explain either way.

    For a choice, ``measured`` is the right choice (computed by the notebook from its own numbers); for a number,
    the measured number, and the prediction passes within the exercise's relative tolerance.
    """
    if name not in PREDICTIONS:
        raise ValueError(f"no prediction exercise named {name!r}; they are {sorted(PREDICTIONS)}.")
    p = PREDICTIONS[name]
    if answer is None or answer is ...:
        return _report(False, f"'{name}': write your prediction first ({p.question}), then run the cell.")
    if p.choices:
        if answer not in p.choices:
            return _report(False, f"'{name}': answer one of {list(p.choices)}, got {answer!r}.")
        if measured not in p.choices:
            raise ValueError(f"the measured answer must be one of {list(p.choices)}, got {measured!r}.")
        verdict = "right" if answer == measured else f"not what the lesson measured ({measured})"
        return _report(answer == measured, f"'{name}': you predicted {answer!r}: {verdict}. Why: {p.why}.")
    if not isinstance(answer, (int, float)) or isinstance(answer, bool) or not math.isfinite(answer):
        return _report(False, f"'{name}': answer with a number, got {answer!r}.")
    if p.absolute_tolerance is not None:
        close, margin = abs(answer - measured) <= p.absolute_tolerance, f"{p.absolute_tolerance:g} of it"
    else:
        close = abs(answer - measured) <= p.relative_tolerance * abs(measured)
        margin = f"{p.relative_tolerance:.0%} of it"
    verdict = "within" if close else "outside"
    return _report(close, f"'{name}': you predicted {answer:g}; the notebook's value is {measured:.3g}, {verdict} "
                          f"{margin}. Why: {p.why}.")


# ---- the student version of a notebook -------------------------------------------------------------------------------

SOLUTION_TAG = "solution"


def student_version(notebook: dict) -> dict:
    """A copy of a notebook (nbformat JSON as a dict) with every cell tagged ``solution`` replaced by its stub.

    A solution cell keeps its stub in ``metadata["lessonlib"]["stub"]`` (e.g. the function's signature and
    ``raise NotImplementedError``); a solution cell without one is refused, so no solution leaks by omission.
    Every code cell's outputs are dropped too: the executed lesson shows each prediction's reference answer, the
    measurements it asks about and the checkers' verdicts. Replaced cells are tagged ``exercise``, except those
    whose stub is only a comment (the closing check, left for the instructor to uncomment).
    """
    out = copy.deepcopy(notebook)
    for i, cell in enumerate(out.get("cells", [])):
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
        tags = cell.get("metadata", {}).get("tags", [])
        if SOLUTION_TAG not in tags:
            continue
        stub_source = cell.get("metadata", {}).get("lessonlib", {}).get("stub")
        if stub_source is None:
            raise ValueError(f"cell {i} is tagged '{SOLUTION_TAG}' but has no metadata.lessonlib.stub: give it the "
                             "code the student starts from.")
        cell["source"] = stub_source
        is_exercise = any(line.strip() and not line.lstrip().startswith("#") for line in stub_source.splitlines())
        cell["metadata"]["tags"] = [t for t in tags if t != SOLUTION_TAG] + (["exercise"] if is_exercise else [])
        del cell["metadata"]["lessonlib"]["stub"]
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m lessonlib.exercises --student OUT``: write the student version of every lesson to OUT."""
    parser = argparse.ArgumentParser(prog="python -m lessonlib.exercises", description=main.__doc__)
    parser.add_argument("--student", required=True, help="the folder to write the student notebooks to")
    parser.add_argument("--notebooks", default="notebooks", help="the lessons' folder (default: notebooks)")
    args = parser.parse_args(argv)
    source, target = Path(args.notebooks), Path(args.student)
    lessons = sorted(source.glob("[0-9][0-9]_*.ipynb"))
    if not lessons:
        raise SystemExit(f"no lessons (NN_name.ipynb) in {source.resolve()}; give --notebooks.")
    if target.resolve() == source.resolve():
        raise SystemExit("--student must be another folder: the student version replaces the solutions.")
    target.mkdir(parents=True, exist_ok=True)
    for path in lessons:
        nb = student_version(json.loads(path.read_text()))
        (target / path.name).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        print(f"{path.name}: {sum('exercise' in c.get('metadata', {}).get('tags', []) for c in nb['cells'])} "
              f"exercise cell(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
