"""The *implement* exercises, one per lesson or more: each names the lesson, the task, the reference (the
library's own function, or a short formula here), the inputs it is checked on, and the hint."""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..clip import contrastive_loss
from ..flow import eps_from_velocity
from ..guidance import combine
from ..nets.controlnet import zero_conv
from ..nets.unet import modulate
from ..schedules import linear_schedule
from ..variants import parallel_part, rescaled
from .engine import Exercise

__all__ = ["EXERCISES"]


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
