"""The training loop every model uses, and the losses the recipes plug into it (lessons 02-10).

:func:`fit` minimises ``loss_fn(model, step)`` with AdamW, linear warm-up then cosine decay, optional
EMA of the weights, a progress bar and an optional wall-clock limit. Each ``*_loss_fn`` builds such a
``LossFn`` over a dataset held in memory:

| loss                           | objective                                              | lesson |
| ------------------------------ | ------------------------------------------------------ | ------ |
| :func:`diffusion_loss_fn`      | E |eps - eps_theta(x_t, t, y or null)|^2              | 02, 07 |
| :func:`classifier_loss_fn`     | CE(f(x), y), CE(f(x_t, t), y) or CE(f(x_0, 0), y)       | 02, 03 |
| :func:`clip_loss_fn`           | symmetric InfoNCE over the B x B similarity matrix     | 05, 06 |
| :func:`text_diffusion_loss_fn` | E |eps - eps_theta(x_t, t, text or null)|^2           | 08     |

``python -m lessonlib.train RECIPE`` (:mod:`lessonlib.train`) picks the loss for a recipe's task.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .captions import measure, random_captions
from .clip import contrastive_loss
from .devices import autocast
from .diffusion import denoising_loss, q_sample
from .flow import TIME_SAMPLINGS, flow_matching_loss
from .guidance import batched_predictions
from .nets.conditions import text_condition
from .nets.toy import ToyCondEpsMLP, ToyEpsMLP, ToyVelocityMLP
from .progress import progress_bar
from .schedules import NoiseSchedule
from .toy import GaussianMixture2D
from .transforms import random_hflip, random_shift
from .types import NULL_CLASS, LossFn

__all__ = ["TrainResult", "EMA", "fit", "drop_mask", "drop_conditions", "diffusion_loss_fn", "classifier_loss_fn",
           "digit_caption_fn", "clip_loss_fn", "text_diffusion_loss_fn", "flow_loss_fn", "distill_loss_fn",
           "fit_toy_eps_model", "fit_toy_flow_model", "fit_toy_cond_model"]


@dataclass
class TrainResult:
    model: nn.Module  # the EMA weights when EMA was used
    losses: list[float]
    seconds: float
    steps: int


class EMA:
    """Exponential moving average of a model's parameters (buffers copied): theta_ema <- d theta_ema + (1-d) theta."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"ema_decay must lie in (0, 1), got {decay}.")
        self.decay, self.model = decay, copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))  # short warm-up so early steps are not frozen in
        # one fused update over all parameters: a loop of per-tensor lerps costs a kernel launch each on a GPU
        torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in model.parameters()], 1 - decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)


def fit(model: nn.Module, loss_fn: LossFn, *, steps: int, lr: float,
        weight_decay: float = 0.0, warmup: int = 100, ema_decay: float | None = None,
        time_limit_s: float | None = None, progress: bool = True, desc: str = "train",
        precision: str = "fp32", checkpoint: str | Path | None = None, checkpoint_every_s: float = 300.0,
        generators: tuple[torch.Generator, ...] = ()) -> TrainResult:
    """Minimise ``loss_fn(model, step)`` with AdamW for ``steps`` steps (lesson 02).

    Learning rate: linear warm-up over ``warmup`` steps, then cosine decay to zero at ``steps``.
    Stops early, honestly reported in ``TrainResult.steps``, when ``time_limit_s`` runs out.

    ``precision="bf16"`` runs the forward pass and the loss under bf16 autocast (float32 weights, gradients,
    optimizer state and EMA: mixed precision, not bf16 weights); see :func:`lessonlib.devices.training_precision`
    for the device check. ``checkpoint`` names a resume file written every ``checkpoint_every_s`` seconds
    (weights, EMA, optimizer, schedule, losses, the torch RNG and the state of each of ``generators``, the ones the
    loss draws batches and noise from): a stopped run started again with the same arguments continues where the
    file left it, on the same batches and noise, and the file is removed when the run ends.
    """
    if steps < 1 or lr <= 0:
        raise ValueError(f"steps must be >= 1 and lr > 0, got steps={steps}, lr={lr}.")
    dev = next(model.parameters()).device
    amp = autocast(precision, dev)  # validates precision
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = lambda s: min(1.0, (s + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * s / steps))  # noqa: E731
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    ema = EMA(model, ema_decay) if ema_decay else None
    meta = {"steps": steps, "lr": lr, "weight_decay": weight_decay, "warmup": warmup, "ema_decay": ema_decay,
            "precision": precision}
    path = Path(checkpoint) if checkpoint is not None else None
    losses, pending, first, done_s = [], [], 0, 0.0
    if path is not None and path.exists():
        first, losses, done_s = _resume(path, meta, model, opt, lr_sched, ema, generators)
        print(f"{desc}: resumed from {path} at step {first:,} of {steps:,} ({done_s / 60:.1f} min done)")
    start = last_save = time.perf_counter()
    model.train()
    bar = progress_bar(range(first, steps), desc=desc, enabled=progress)
    for step in bar:
        with amp:
            loss = loss_fn(model, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_sched.step()
        if ema:
            ema.update(model, step)
        pending.append(loss.detach().float())
        if step % 50 == 0:  # read the losses back every 50 steps: a read per step would stall a GPU every step
            losses += torch.stack(pending).tolist()
            pending.clear()
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        now = time.perf_counter()
        if path is not None and now - last_save > checkpoint_every_s and step + 1 < steps:
            losses += torch.stack(pending).tolist() if pending else []
            pending.clear()
            _save_resume(path, meta, step + 1, losses, done_s + now - start, model, opt, lr_sched, ema, generators)
            last_save = now
        if time_limit_s is not None and done_s + now - start > time_limit_s:
            break
    losses += torch.stack(pending).tolist() if pending else []
    model.eval()
    if path is not None and path.exists():
        path.unlink()
    return TrainResult(ema.model if ema else model, losses, done_s + time.perf_counter() - start, len(losses))


def _save_resume(path: Path, meta: dict, step: int, losses: list[float], seconds: float, model, opt, lr_sched, ema,
                 generators) -> None:
    state = {"meta": meta, "step": step, "losses": losses, "seconds": seconds, "model": model.state_dict(),
             "opt": opt.state_dict(), "lr_sched": lr_sched.state_dict(),
             "ema": ema.model.state_dict() if ema else None, "torch_rng": torch.get_rng_state(),
             "generators": [g.get_state() for g in generators]}
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, tmp)
    tmp.replace(path)  # a run killed while writing leaves the previous file whole


def _resume(path: Path, meta: dict, model, opt, lr_sched, ema, generators) -> tuple[int, list[float], float]:
    state = torch.load(path, map_location=next(model.parameters()).device, weights_only=True)
    if state["meta"] != meta or len(state["generators"]) != len(generators):
        raise ValueError(f"the resume file {path} belongs to another run ({state['meta']}, not {meta}); delete it to "
                         "start this one afresh, or resume with that run's arguments.")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    lr_sched.load_state_dict(state["lr_sched"])
    if ema:
        ema.model.load_state_dict(state["ema"])
    torch.set_rng_state(state["torch_rng"].cpu())
    for g, g_state in zip(generators, state["generators"]):
        g.set_state(g_state.cpu())
    return state["step"], list(state["losses"]), float(state["seconds"])


def _check_p_uncond(p_uncond: float) -> None:
    if not 0 <= p_uncond <= 1:
        raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond}.")


def drop_mask(n: int, p_uncond: float, generator: torch.Generator | None = None) -> Tensor:
    """(n,) bools, each True independently with probability p_uncond: which conditions become null (lessons 07, 08)."""
    _check_p_uncond(p_uncond)
    return torch.rand(n, generator=generator) < p_uncond


def drop_conditions(labels: Tensor, p_uncond: float, generator: torch.Generator | None = None) -> Tensor:
    """Replace each label by the null class (NULL_CLASS = -1) independently with probability p_uncond (lesson 07)."""
    drop = drop_mask(len(labels), p_uncond, generator)
    return torch.where(drop.to(labels.device), torch.full_like(labels, NULL_CLASS), labels)


def _batch(images: Tensor, labels: Tensor, size: int, generator: torch.Generator):
    idx = torch.randint(0, len(images), (size,), generator=generator)
    return images[idx], labels[idx]


def diffusion_loss_fn(images: Tensor, labels: Tensor, schedule, *, batch_size: int, conditional: bool,
                      p_uncond: float = 0.0, generator: torch.Generator,
                      hint: Callable[[Tensor], Tensor] | None = None, min_snr_gamma: float | None = None) -> LossFn:
    """Denoising loss on random batches; conditional models see labels dropped to null at rate p_uncond.

    With ``hint`` (a ControlNet, lesson 10) the condition is ``{"class": labels, "hint": hint(x0)}``.
    """
    def loss(model: nn.Module, step: int) -> Tensor:
        x0, y = _batch(images, labels, batch_size, generator)
        cond = drop_conditions(y, p_uncond, generator) if conditional else None
        if hint is not None:
            cond = {"class": cond, "hint": hint(x0)}
        return denoising_loss(model, x0, schedule, generator=generator, cond=cond, min_snr_gamma=min_snr_gamma)
    return loss


def flow_loss_fn(images: Tensor, labels: Tensor, *, batch_size: int, p_uncond: float, generator: torch.Generator,
                 time_sampling: str = "logit-normal") -> LossFn:
    """Conditional flow matching on the linear path: || v(x_t, t, y) - (eps - x0) ||^2 (lesson 12).

    t is logit-normal (sigmoid of a standard normal, as in Stable Diffusion 3: more weight on the middle of
    the path) or uniform in [0, 1]; labels are dropped to null at rate p_uncond, as for CFG (lesson 07).
    """
    if time_sampling not in TIME_SAMPLINGS:
        raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS}, got {time_sampling!r}.")

    def loss(model: nn.Module, step: int) -> Tensor:
        x0, y = _batch(images, labels, batch_size, generator)
        cond = drop_conditions(y, p_uncond, generator)
        return flow_matching_loss(lambda x, t: model(x, t, cond), x0, generator=generator, sampling=time_sampling)
    return loss


def distill_loss_fn(teacher: nn.Module, images: Tensor, labels: Tensor, schedule, *, batch_size: int,
                    scale_range: tuple[float, float], generator: torch.Generator) -> LossFn:
    """Guidance distillation, stage 1 (Meng et al. 2023, lesson 11): the student, told the scale s, matches the
    teacher's classifier-free guided eps_u + s (eps_c - eps_u) at that s.

    x_t comes from real digits noised at t uniform; s is uniform over ``scale_range``, one per image; the frozen
    teacher's two passes are batched and run without gradients.
    """
    lo, hi = scale_range

    def loss(model: nn.Module, step: int) -> Tensor:
        x0, y = _batch(images, labels, batch_size, generator)
        t = torch.randint(0, schedule.T, (len(x0),), generator=generator)
        x_t = q_sample(schedule, x0, t, torch.randn(x0.shape, generator=generator))
        s = lo + (hi - lo) * torch.rand(len(x0), generator=generator)
        with torch.no_grad():
            u, c = batched_predictions(teacher, [NULL_CLASS, y])(x_t, t)
            target = torch.lerp(u, c, s.view(-1, *([1] * (x0.ndim - 1))))
        return (model(x_t, t, {"class": y, "scale": s}) - target).pow(2).mean()
    return loss


def classifier_loss_fn(images: Tensor, labels: Tensor, *, batch_size: int, generator: torch.Generator,
                       max_shift: int = 2, schedule=None, noised: bool = True, hflip: bool = False) -> LossFn:
    """Cross-entropy on randomly shifted (and with ``hflip`` randomly mirrored) images (lessons 02-03).

    Without a schedule the model sees clean images only (the judge). With one, it is called as
    ``model(x, t)``: on q_sample(x0, t) with t uniform in 0..T-1 (noise-aware), or with ``noised=False``
    on clean x0 with t = 0 (the clean counter-example of lesson 03).
    """
    def loss(model: nn.Module, step: int) -> Tensor:
        x, y = _batch(images, labels, batch_size, generator)
        x = random_shift(x, max_shift, generator)
        if hflip:
            x = random_hflip(x, generator)
        if schedule is None:
            return F.cross_entropy(model(x), y)
        if noised:
            t = torch.randint(0, schedule.T, (len(x),), generator=generator)
            x = q_sample(schedule, x, t, generator=generator)
        else:
            t = torch.zeros(len(x), dtype=torch.long)
        return F.cross_entropy(model(x, t), y)
    return loss


def digit_caption_fn(images: Tensor, labels: Tensor, bins, *, generator: torch.Generator,
                     **caption_options) -> Callable[[Tensor], list[str]]:
    """idx -> random captions of those digits from their measured attribute words (lessons 05, 08)."""
    words = bins.words(measure(images))
    return lambda idx: random_captions(labels[idx], {a: [w[i] for i in idx.tolist()] for a, w in words.items()},
                                       generator=generator, **caption_options)


def clip_loss_fn(images: Tensor, *, batch_size: int, generator: torch.Generator, caption_fn: Callable[[Tensor], list[str]],
                 text_encoder: Callable | None = None, schedule=None, logit_scale: float | None = None,
                 max_shift: int = 2) -> LossFn:
    """Symmetric contrastive loss on shifted images and ``caption_fn(idx)`` captions (lesson 05).

    With ``text_encoder`` (a frozen CLIP's text tower), a fixed ``logit_scale`` and a ``schedule``, the model is
    an image encoder of (x_t, t) trained on q_sample(x0, t) with t uniform: the noise-aware CLIP of lesson 06.
    """
    def loss(model: nn.Module, step: int) -> Tensor:
        idx = torch.randint(0, len(images), (batch_size,), generator=generator)
        texts = caption_fn(idx)
        x = random_shift(images[idx], max_shift, generator)
        if text_encoder is None:
            return contrastive_loss(model.encode_image(x, normalize=False), model.encode_text(texts, normalize=False),
                                    model.logit_scale)
        with torch.no_grad():
            text_emb = text_encoder(texts)
        t = torch.randint(0, schedule.T, (len(x),), generator=generator)
        return contrastive_loss(model(q_sample(schedule, x, t, generator=generator), t), text_emb,
                                torch.tensor(logit_scale))
    return loss


def text_diffusion_loss_fn(images: Tensor, labels: Tensor, schedule, *, clip, batch_size: int, p_uncond: float,
                           generator: torch.Generator, p_attribute: float = 0.5,
                           p_digit: float = 1.0, tokens: bool = True, min_snr_gamma: float | None = None) -> LossFn:
    """Denoising loss conditioned on frozen-CLIP features of random captions, dropped to null w.p. p_uncond (lesson 08);
    ``tokens=False``: the pooled text embedding alone (a U-Net without cross-attention); ``min_snr_gamma`` weights
    it as :func:`diffusion_loss_fn` does."""
    _check_p_uncond(p_uncond)
    captions = digit_caption_fn(images, labels, clip.bins, generator=generator, p_attribute=p_attribute, p_digit=p_digit)

    def loss(model: nn.Module, step: int) -> Tensor:
        idx = torch.randint(0, len(images), (batch_size,), generator=generator)
        cond = text_condition(clip, captions(idx), tokens=tokens)
        cond["null"] = drop_mask(batch_size, p_uncond, generator)
        return denoising_loss(model, images[idx], schedule, generator=generator, cond=cond, min_snr_gamma=min_snr_gamma)
    return loss


# ---- the exact 2-D toy's small networks (lessons 01, 11, 12) ----------------------------------------------------

def _fit_toy(model: nn.Module, mixture: GaussianMixture2D, loss_fn, *, steps: int, batch: int, lr: float,
             seed: int, progress: bool, desc: str):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    for _ in progress_bar(range(steps), desc=desc, enabled=progress):
        x0, labels = mixture.sample(batch, generator=gen)
        loss = loss_fn(model, x0, labels, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return model.eval(), losses


def fit_toy_eps_model(mixture: GaussianMixture2D, schedule: NoiseSchedule, *, steps: int = 3000,
                      batch: int = 512, lr: float = 2e-3, seed: int = 0, progress: bool = True):
    """Train :class:`ToyEpsMLP` by denoising score matching on fresh mixture samples; returns (model, losses)."""
    torch.manual_seed(seed)
    return _fit_toy(ToyEpsMLP(), mixture, lambda m, x0, _, gen: denoising_loss(m, x0, schedule, generator=gen),
                    steps=steps, batch=batch, lr=lr, seed=seed, progress=progress, desc="toy DSM")


def fit_toy_flow_model(mixture: GaussianMixture2D, *, steps: int = 3000, batch: int = 512, lr: float = 2e-3,
                       seed: int = 0, sampling: str = "logit-normal", progress: bool = True):
    """Train :class:`ToyVelocityMLP` by flow matching on the linear path; returns (model, losses) (lesson 12)."""
    torch.manual_seed(seed)
    return _fit_toy(ToyVelocityMLP(), mixture,
                    lambda m, x0, _, gen: flow_matching_loss(m, x0, generator=gen, sampling=sampling),
                    steps=steps, batch=batch, lr=lr, seed=seed, progress=progress, desc="toy flow matching")


def fit_toy_cond_model(mixture: GaussianMixture2D, schedule: NoiseSchedule, *, steps: int = 3000, hidden: int = 128,
                       p_uncond: float = 0.1, batch: int = 512, lr: float = 2e-3, seed: int = 0,
                       progress: bool = True):
    """Train :class:`ToyCondEpsMLP` with label dropout (CFG's recipe, lesson 07) on the mixture's classes.

    A small ``hidden`` or few ``steps`` gives the weaker model that autoguidance needs (lesson 11).
    """
    torch.manual_seed(seed)

    def loss(m, x0, labels, gen):
        cond = drop_conditions(labels, p_uncond, gen)
        return denoising_loss(m, x0, schedule, generator=gen, y=cond)

    return _fit_toy(ToyCondEpsMLP(mixture.num_classes, hidden=hidden), mixture, loss, steps=steps, batch=batch,
                    lr=lr, seed=seed, progress=progress, desc="toy conditional DSM")
