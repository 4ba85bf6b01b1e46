"""The inputs each *implement* exercise is checked on: the lesson's shapes and edge cases, and the small fixed
models (a classifier, an encoder, eps- and velocity-models) that stand in for the lesson's networks."""
from __future__ import annotations

import torch
from torch import Tensor

from ..schedules import linear_schedule


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def expand(a: Tensor, like: Tensor) -> Tensor:
    """(B,) per-sample values broadcast over a (B, ...) tensor."""
    return a.reshape(-1, *([1] * (like.ndim - 1))).to(like)


class ToyClassifier:
    """A fixed logistic-regression 'classifier(x_t, t) -> logits' on 28x28 images whose logits depend on t."""

    def __init__(self):
        g = gen(10)
        self.w, self.b = torch.randn(784, 10, generator=g) / 28, torch.randn(10, generator=g)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return x.flatten(1) @ self.w + (t.float() / 1000)[:, None] * self.b


class ToyEncoder:
    """A fixed image encoder x -> (B, 16) embedding, smooth enough that its cosine has an interesting gradient."""

    def __init__(self):
        g = gen(11)
        self.w1, self.w2 = torch.randn(784, 32, generator=g) / 28, torch.randn(32, 16, generator=g) / 6

    def __call__(self, x: Tensor) -> Tensor:
        return torch.tanh(x.flatten(1) @ self.w1) @ self.w2


class ToyEps:
    """A fixed, nonlinear 'eps_model(x_t, t)' whose output depends on t."""

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return 0.3 * x + torch.tanh(2 * x) * expand(t.float() / 1000, x)


class ToyCondEps:
    """A fixed 'model(x_t, t, labels)' with a null class 10: each label has its own gain and pattern."""

    def __init__(self):
        g = gen(17)
        self.gain, self.pattern = torch.rand(11, generator=g) + 0.5, torch.randn(11, 1, 28, 28, generator=g)

    def __call__(self, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        return torch.tanh(x * expand(self.gain[labels], x) + self.pattern[labels]) * expand(t.float() / 1000, x)


class ToyVelocity:
    """A fixed, nonlinear 'v_model(x_t, t)' with t in [0, 1]."""

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return torch.tanh(3 * x) - expand(t, x) * x


# ---- the inputs each is checked on ----------------------------------------------------------------------------------

def score_cases():
    g = gen(0)
    return [("a batch of 2-D toy points (B, 2), abar in (0, 1)",
             {"eps": torch.randn(6, 2, generator=g), "abar": torch.rand(6, generator=g) * 0.98 + 0.01}),
            ("MNIST-shaped (B, 1, 28, 28) with one abar per image", {"eps": torch.randn(3, 1, 28, 28, generator=g),
                                                                  "abar": torch.tensor([0.05, 0.5, 0.95])}),
            ("almost clean, abar = 0.9999 (the score is large)", {"eps": torch.randn(2, 2, generator=g),
                                                                  "abar": torch.tensor([0.9999, 0.9999])})]


def ddim_cases():
    g = gen(1)
    x, e = torch.randn(4, 1, 28, 28, generator=g), torch.randn(4, 1, 28, 28, generator=g)
    return [("a middle step, abar_t = 0.3 -> abar_prev = 0.5", {"x_t": x, "eps": e, "abar_t": torch.full((4,), 0.3),
                                                                "abar_prev": torch.full((4,), 0.5)}),
            ("a different step per image", {"x_t": x, "eps": e, "abar_t": torch.tensor([0.01, 0.2, 0.6, 0.9]),
                                            "abar_prev": torch.tensor([0.05, 0.4, 0.8, 0.99])}),
            ("the last step, to the clean image (abar_prev = 1)", {"x_t": x, "eps": e,
                                                                    "abar_t": torch.full((4,), 0.9),
                                                                    "abar_prev": torch.ones(4)})]


def cfg_cases():
    g = gen(2)
    u, c = torch.randn(3, 1, 28, 28, generator=g), torch.randn(3, 1, 28, 28, generator=g)
    return [(f"scale {s:g}", {"eps_u": u, "eps_c": c, "scale": s}) for s in (3.0, 1.0, 0.0, 7.5)]


def parallel_cases():
    g = gen(3)
    d, c = torch.randn(4, 1, 28, 28, generator=g), torch.randn(4, 1, 28, 28, generator=g)
    return [("a batch of MNIST-shaped x0 predictions", {"d": d, "c": c}),
            ("images of very different brightness (per-image projections)", {"d": d, "c": c * torch.tensor(
                [0.1, 1.0, 10.0, 100.0]).reshape(4, 1, 1, 1)}),
            ("d already parallel to c", {"d": 2.5 * c, "c": c})]


def velocity_cases():
    g = gen(4)
    x, v = torch.randn(3, 1, 28, 28, generator=g), torch.randn(3, 1, 28, 28, generator=g)
    return [("one t per image", {"x_t": x, "v": v, "t": torch.tensor([0.1, 0.5, 0.9])}),
            ("pure noise, t = 1 (then eps is x_t itself)", {"x_t": x, "v": v, "t": torch.ones(3)})]


def q_sample_cases():
    g = gen(5)
    abar = linear_schedule(1000).abar.float()
    x0, eps = torch.randn(3, 1, 28, 28, generator=g), torch.randn(3, 1, 28, 28, generator=g)
    return [("MNIST-shaped, every image at its own timestep, t = [999, 0, 500]",
             {"x0": x0, "t": torch.tensor([999, 0, 500]), "eps": eps, "abar": abar}),
            ("2-D toy points with a short schedule (T = 12), timesteps out of batch order",
             {"x0": torch.randn(5, 2, generator=g), "t": torch.tensor([10, 3, 7, 0, 11]),
              "eps": torch.randn(5, 2, generator=g), "abar": linear_schedule(12).abar.float()}),
            ("every image at t = 250", {"x0": x0, "t": torch.full((3,), 250), "eps": eps, "abar": abar})]


def noise_aware_cases():
    g = gen(6)
    abar = linear_schedule(1000).abar.float()
    x0 = torch.rand(6, 1, 28, 28, generator=g) * 2 - 1
    eps = torch.randn(6, 1, 28, 28, generator=g)
    y = torch.tensor([3, 1, 4, 1, 5, 9])
    return [("a batch of six images, each at its own t", {"classifier": ToyClassifier(), "x0": x0, "y": y,
                                                          "t": torch.tensor([600, 10, 999, 250, 0, 400]),
                                                          "eps": eps, "abar": abar}),
            ("all six at t = 0 (clean)", {"classifier": ToyClassifier(), "x0": x0, "y": y,
                                          "t": torch.zeros(6, dtype=torch.long), "eps": eps, "abar": abar})]


def classifier_guided_cases():
    g = gen(7)
    e, grad = torch.randn(4, 1, 28, 28, generator=g), torch.randn(4, 1, 28, 28, generator=g)
    abar = torch.tensor([0.01, 0.3, 0.7, 0.99])
    return [(f"scale {s:g}, a different abar_t per image", {"eps": e, "grad": grad, "abar": abar, "scale": s})
            for s in (3.0, 0.0, -4.0)]


def contrastive_cases():
    g = gen(8)
    img, txt = torch.randn(8, 16, generator=g) * 3, torch.randn(8, 16, generator=g)
    return [("8 random, unnormalised pairs, 1 / tau = 20", {"image_emb": img, "text_emb": txt,
                                                            "logit_scale": torch.tensor(20.0)}),
            ("8 nearly matching pairs, 1 / tau = 100", {"image_emb": img, "text_emb": 5 * img + txt,
                                                        "logit_scale": torch.tensor(100.0)}),
            ("3 pairs whose texts are not in the images' order, 1 / tau = 1",
             {"image_emb": img[:3], "text_emb": txt[[2, 0, 1]] + img[:3], "logit_scale": torch.tensor(1.0)})]


def cosine_grad_cases():
    g = gen(9)
    x = torch.rand(4, 1, 28, 28, generator=g) * 2 - 1
    return [("one prompt embedding (16,) for all four images",
             {"encoder": ToyEncoder(), "text_emb": torch.randn(16, generator=g), "x": x}),
            ("one prompt embedding per image, (4, 16)",
             {"encoder": ToyEncoder(), "text_emb": torch.randn(4, 16, generator=g), "x": x})]


def compose_cases():
    g = gen(12)
    u = torch.randn(3, 1, 28, 28, generator=g)
    e1, e2 = torch.randn(3, 1, 28, 28, generator=g), torch.randn(3, 1, 28, 28, generator=g)
    return [("one prompt at scale 3 (plain CFG)", {"eps_u": u, "eps_list": [e1], "scales": [3.0]}),
            ("two prompts at scale 3 each", {"eps_u": u, "eps_list": [e1, e2], "scales": [3.0, 3.0]}),
            ("a prompt at 4 and one pushed away at -1.5", {"eps_u": u, "eps_list": [e1, e2], "scales": [4.0, -1.5]})]


def film_cases():
    g = gen(13)
    h = torch.randn(2, 8, 5, 5, generator=g)
    return [("h (2, 8, 5, 5) with one scale and shift per sample and channel (2, 8)",
             {"h": h, "scale": torch.randn(2, 8, generator=g), "shift": torch.randn(2, 8, generator=g)}),
            ("scale and shift zero (FiLM is then the identity; AdaLN-zero starts its blocks here)",
             {"h": h, "scale": torch.zeros(2, 8), "shift": torch.zeros(2, 8)}),
            ("a square map whose channels equal its side, h (2, 5, 5, 5)",
             {"h": h[:, :5], "scale": torch.randn(2, 5, generator=g), "shift": torch.randn(2, 5, generator=g)})]


def zero_conv_cases():
    g = gen(14)
    h, target = torch.randn(2, 16, 7, 7, generator=g), torch.randn(2, 16, 7, 7, generator=g)
    return [("16 channels at initialisation: the output", {"channels": 16, "h": h, "target": target,
                                                           "sgd_steps": 0}),
            ("16 channels after one SGD step (lr 1e-3) on sum(output * target)",
             {"channels": 16, "h": h, "target": target, "sgd_steps": 1})]


def guided_cases():
    g = gen(18)
    x = torch.randn(4, 1, 28, 28, generator=g)
    t = torch.tensor([999, 600, 250, 20])
    abar = linear_schedule(1000).abar.float()[t]
    base = {"eps_model": ToyEps(), "classifier": ToyClassifier(), "x_t": x, "t": t, "abar_t": abar}
    return [("scale 3, four images each at its own t with its own class", {**base, "y": torch.tensor([3, 1, 4, 1]),
                                                                          "scale": 3.0}),
            ("scale 0 (the unguided prediction)", {**base, "y": torch.tensor([3, 1, 4, 1]), "scale": 0.0}),
            ("scale 10, every image towards class 7", {**base, "y": torch.full((4,), 7), "scale": 10.0})]


def cfg_eps_cases():
    g = gen(19)
    base = {"model": ToyCondEps(), "x_t": torch.randn(4, 1, 28, 28, generator=g),
            "t": torch.tensor([900, 500, 100, 10]), "y": torch.tensor([3, 7, 7, 0]), "null": 10}
    return [(f"scale {s:g}, four images with their own t and class, null class 10", {**base, "scale": s})
            for s in (3.0, 0.0, 1.0)]


def apg_cases():
    g = gen(20)
    c = torch.randn(4, 1, 28, 28, generator=g)
    u = c - torch.randn(4, 1, 28, 28, generator=g) * torch.tensor([0.05, 0.5, 2.0, 8.0]).reshape(4, 1, 1, 1)
    return [("s = 15, the perpendicular part only (eta = 0), no cap", {"c": c, "u": u, "scale": 15.0, "eta": 0.0,
                                                                        "r": None}),
            ("s = 15, eta = 0, the norm capped at r = 20 (it binds for two of the four images)",
             {"c": c, "u": u, "scale": 15.0, "eta": 0.0, "r": 20.0}),
            ("s = 8, eta = 0.5, r = 20", {"c": c, "u": u, "scale": 8.0, "eta": 0.5, "r": 20.0}),
            ("eta = 1 and no cap: plain CFG at s = 3", {"c": c, "u": u, "scale": 3.0, "eta": 1.0, "r": None})]


def flow_loss_cases():
    g = gen(21)
    x0, eps = torch.rand(4, 1, 28, 28, generator=g) * 2 - 1, torch.randn(4, 1, 28, 28, generator=g)
    return [("four images, each at its own time t in (0, 1)", {"v_model": ToyVelocity(), "x0": x0, "eps": eps,
                                                              "t": torch.tensor([0.05, 0.3, 0.7, 0.99])}),
            ("every image at t = 0 (the data end: x_t = x0)", {"v_model": ToyVelocity(), "x0": x0, "eps": eps,
                                                              "t": torch.zeros(4)}),
            ("every image at t = 1 (the noise end: x_t = eps)", {"v_model": ToyVelocity(), "x0": x0, "eps": eps,
                                                                "t": torch.ones(4)})]


def rescale_case(phi: float) -> dict:
    g = gen(16)
    cond = torch.randn(3, 1, 28, 28, generator=g) * torch.tensor([0.5, 1.0, 2.0]).reshape(3, 1, 1, 1)
    guided = 3 * cond + torch.randn(3, 1, 28, 28, generator=g) * torch.tensor([1.0, 4.0, 0.2]).reshape(3, 1, 1, 1)
    return {"guided": guided, "cond": cond, "phi": phi}


def euler_cases():
    g = gen(15)
    x, v = torch.randn(3, 1, 28, 28, generator=g), torch.randn(3, 1, 28, 28, generator=g)
    return [("a step from t = 0.6 to 0.5", {"x_t": x, "v": v, "t": torch.full((3,), 0.6),
                                            "t_next": torch.full((3,), 0.5)}),
            ("a different step per image, the last to t = 0", {"x_t": x, "v": v, "t": torch.tensor([1.0, 0.3, 0.05]),
                                                               "t_next": torch.tensor([0.9, 0.2, 0.0])})]
