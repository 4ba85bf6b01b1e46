"""One training loop for every model: ``python -m lessonlib.train RECIPE`` (lesson 02).

:func:`fit` is the loop every model uses: AdamW, linear warm-up then cosine decay, optional EMA of
the weights, a progress bar, an optional wall-clock limit. A recipe fixes the model, data, loss and
hyper-parameters; :func:`run_recipe` trains one, measures it, and writes the safetensors file and its
manifest entry (command, data, wall time, machine, metrics) through :mod:`lessonlib.zoo`.
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import zoo
from .captions import measure, random_captions
from .diffusion import denoising_loss, q_sample
from .evaluate import accuracy_by_t, load_dataset
from .evaluate import evaluate as evaluate_checkpoint
from .progress import progress_bar
from .recipes import RECIPES, Recipe
from .schedules import make_schedule

__all__ = ["Recipe", "RECIPES", "TrainResult", "fit", "diffusion_loss_fn", "classifier_loss_fn", "accuracy_by_t",
           "drop_conditions", "drop_mask", "load_dataset", "random_shift", "run_recipe", "main", "clip_loss_fn",
           "digit_caption_fn", "text_diffusion_loss_fn"]


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
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.lerp_(p.detach(), 1 - decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)


def fit(model: nn.Module, loss_fn: Callable[[nn.Module, int], Tensor], *, steps: int, lr: float,
        weight_decay: float = 0.0, warmup: int = 100, ema_decay: float | None = None,
        time_limit_s: float | None = None, progress: bool = True, desc: str = "train") -> TrainResult:
    """Minimise ``loss_fn(model, step)`` with AdamW for ``steps`` steps (lesson 02).

    Learning rate: linear warm-up over ``warmup`` steps, then cosine decay to zero at ``steps``.
    Stops early, honestly reported in ``TrainResult.steps``, when ``time_limit_s`` runs out.
    """
    if steps < 1 or lr <= 0:
        raise ValueError(f"steps must be >= 1 and lr > 0, got steps={steps}, lr={lr}.")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = lambda s: min(1.0, (s + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * s / steps))  # noqa: E731
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    ema = EMA(model, ema_decay) if ema_decay else None
    losses, start = [], time.perf_counter()
    model.train()
    bar = progress_bar(range(steps), desc=desc, enabled=progress)
    for step in bar:
        loss = loss_fn(model, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_sched.step()
        if ema:
            ema.update(model, step)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        if time_limit_s is not None and time.perf_counter() - start > time_limit_s:
            break
    model.eval()
    return TrainResult(ema.model if ema else model, losses, time.perf_counter() - start, len(losses))


def _check_p_uncond(p_uncond: float) -> None:
    if not 0 <= p_uncond <= 1:
        raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond}.")


def drop_mask(n: int, p_uncond: float, generator: torch.Generator | None = None) -> Tensor:
    """(n,) bools, each True independently with probability p_uncond: which conditions become null (lessons 07, 08)."""
    _check_p_uncond(p_uncond)
    return torch.rand(n, generator=generator) < p_uncond


def drop_conditions(labels: Tensor, p_uncond: float, generator: torch.Generator | None = None) -> Tensor:
    """Replace each label by the null label -1 independently with probability p_uncond (lesson 07)."""
    drop = drop_mask(len(labels), p_uncond, generator)
    return torch.where(drop.to(labels.device), torch.full_like(labels, -1), labels)


def _batch(images: Tensor, labels: Tensor, size: int, generator: torch.Generator):
    idx = torch.randint(0, len(images), (size,), generator=generator)
    return images[idx], labels[idx]


def diffusion_loss_fn(images: Tensor, labels: Tensor, schedule, *, batch_size: int, conditional: bool,
                      p_uncond: float = 0.0, generator: torch.Generator,
                      hint: Callable[[Tensor], Tensor] | None = None) -> Callable[[nn.Module, int], Tensor]:
    """Denoising loss on random batches; conditional models see labels dropped to null at rate p_uncond.

    With ``hint`` (a ControlNet, lesson 10) the condition is ``{"class": labels, "hint": hint(x0)}``.
    """
    def loss(model: nn.Module, step: int) -> Tensor:
        x0, y = _batch(images, labels, batch_size, generator)
        cond = drop_conditions(y, p_uncond, generator) if conditional else None
        if hint is not None:
            cond = {"class": cond, "hint": hint(x0)}
        return denoising_loss(model, x0, schedule, generator=generator, cond=cond)
    return loss


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image by up to max_shift pixels (zero = background -1 padding)."""
    padded = F.pad(x, [max_shift] * 4, value=-1.0)
    offsets = torch.randint(0, 2 * max_shift + 1, (len(x), 2), generator=generator)
    h, w = x.shape[-2:]
    return torch.stack([p[:, i:i + h, j:j + w] for p, (i, j) in zip(padded, offsets.tolist())])


def classifier_loss_fn(images: Tensor, labels: Tensor, *, batch_size: int, generator: torch.Generator,
                       max_shift: int = 2, schedule=None, noised: bool = True) -> Callable[[nn.Module, int], Tensor]:
    """Cross-entropy on randomly shifted images (lessons 02-03).

    Without a schedule the model sees clean images only (the judge). With one, it is called as
    ``model(x, t)``: on q_sample(x0, t) with t uniform in 0..T-1 (noise-aware), or with ``noised=False``
    on clean x0 with t = 0 (the clean counter-example of lesson 03).
    """
    def loss(model: nn.Module, step: int) -> Tensor:
        x, y = _batch(images, labels, batch_size, generator)
        x = random_shift(x, max_shift, generator)
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
                 max_shift: int = 2) -> Callable[[nn.Module, int], Tensor]:
    """Symmetric contrastive loss on shifted images and ``caption_fn(idx)`` captions (lesson 05).

    With ``text_encoder`` (a frozen CLIP's text tower), a fixed ``logit_scale`` and a ``schedule``, the model is
    an image encoder of (x_t, t) trained on q_sample(x0, t) with t uniform: the noise-aware CLIP of lesson 06.
    """
    from .clip import contrastive_loss

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
                           p_digit: float = 1.0) -> Callable[[nn.Module, int], Tensor]:
    """Denoising loss conditioned on frozen-CLIP features of random captions, dropped to null w.p. p_uncond (lesson 08)."""
    from .clip import text_condition

    _check_p_uncond(p_uncond)
    captions = digit_caption_fn(images, labels, clip.bins, generator=generator, p_attribute=p_attribute, p_digit=p_digit)

    def loss(model: nn.Module, step: int) -> Tensor:
        idx = torch.randint(0, len(images), (batch_size,), generator=generator)
        cond = text_condition(clip, captions(idx))
        cond["null"] = drop_mask(batch_size, p_uncond, generator)
        return denoising_loss(model, images[idx], schedule, generator=generator, cond=cond)
    return loss


def run_recipe(name: str, *, steps: int | None = None, time_limit_min: float | None = None,
               directory=None, evaluate: bool = True, progress: bool = True) -> tuple[nn.Module, dict]:
    """Train recipe ``name`` on MNIST, measure it and save it to the zoo; returns (model, manifest entry)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; available: {', '.join(sorted(RECIPES))}.")
    recipe = copy.deepcopy(RECIPES[name])
    if steps is not None:
        recipe.steps = steps
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    train = load_dataset(recipe.dataset, "train")
    model_cls, config_cls = zoo.ARCHITECTURES[recipe.arch]
    if recipe.task == "controlnet":
        model = model_cls.from_base(zoo.load(recipe.extra["base"]))
    else:
        model = model_cls(config_cls(**recipe.config))
    schedule = make_schedule(recipe.schedule, recipe.T)
    if recipe.task == "clip" and recipe.dataset == "mnist":
        from .captions import fit_bins

        model.set_bins(fit_bins(train.images))
        loss_fn = clip_loss_fn(train.images, batch_size=recipe.batch_size, generator=gen,
                               caption_fn=digit_caption_fn(train.images, train.labels, model.bins, generator=gen))
    elif recipe.task == "clip":
        from .captions import class_captions

        loss_fn = clip_loss_fn(train.images, batch_size=recipe.batch_size, generator=gen,
                               caption_fn=lambda idx: class_captions(train.labels[idx], train.classes, generator=gen))
    elif recipe.task == "noisy-clip":
        clip = zoo.load(recipe.extra["clip"])
        loss_fn = clip_loss_fn(train.images, batch_size=recipe.batch_size, generator=gen,
                               caption_fn=digit_caption_fn(train.images, train.labels, clip.bins, generator=gen),
                               text_encoder=clip.encode_text, schedule=schedule, logit_scale=clip.logit_scale.item())
    elif recipe.task == "text-diffusion":
        loss_fn = text_diffusion_loss_fn(train.images, train.labels, schedule, clip=zoo.load(recipe.extra["clip"]),
                                         batch_size=recipe.batch_size, p_uncond=recipe.p_uncond, generator=gen,
                                         p_attribute=recipe.extra["p_attribute"], p_digit=recipe.extra["p_digit"])
    elif recipe.task in ("diffusion", "controlnet"):
        from .nets.controlnet import coarse_layout

        hint = (lambda x0: coarse_layout(x0, cells=recipe.extra["cells"])) if recipe.task == "controlnet" else None
        loss_fn = diffusion_loss_fn(train.images, train.labels, schedule, batch_size=recipe.batch_size,
                                    conditional=recipe.task == "controlnet" or bool(model.config.num_classes),
                                    p_uncond=recipe.p_uncond, generator=gen, hint=hint)
    else:
        loss_fn = classifier_loss_fn(train.images, train.labels, batch_size=recipe.batch_size, generator=gen,
                                     schedule=None if recipe.task == "judge" else schedule,
                                     noised=recipe.task == "noisy-classifier")
    result = fit(model, loss_fn, steps=recipe.steps, lr=recipe.lr, weight_decay=recipe.weight_decay,
                 warmup=recipe.warmup, ema_decay=recipe.ema_decay, progress=progress, desc=name,
                 time_limit_s=None if time_limit_min is None else 60 * time_limit_min)
    metrics = evaluate_checkpoint(recipe, result.model, progress) if evaluate else {}
    command = " ".join(["python -m lessonlib.train", name] + (sys.argv[2:] if sys.argv[1:2] == [name] else []))
    info = {"recipe": asdict(recipe), "command": command, "data": train.source, "train_images": len(train),
            "steps_done": result.steps, "wall_time_s": round(result.seconds, 1),
            "final_loss": sum(result.losses[-100:]) / len(result.losses[-100:]),
            "loss_curve": _loss_curve(result.losses),
            "parameters": sum(p.numel() for p in result.model.parameters()), "metrics": metrics}
    entry = zoo.save(name, result.model, info=info, directory=directory)
    return result.model, entry


def _loss_curve(losses: list[float], every: int = 50) -> list[float]:
    """Mean training loss over each block of ``every`` steps (the manifest's loss curve, lesson 10)."""
    return [round(sum(losses[i:i + every]) / len(losses[i:i + every]), 5) for i in range(0, len(losses), every)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lessonlib.train", description="Train a named recipe into the zoo.")
    parser.add_argument("recipe", choices=sorted(RECIPES))
    parser.add_argument("--steps", type=int, help="override the recipe's number of steps")
    parser.add_argument("--minutes", type=float, help="stop training after this many minutes (reported)")
    parser.add_argument("--out", help="checkpoint directory (default: data/checkpoints or $LESSONLIB_CHECKPOINTS)")
    parser.add_argument("--no-eval", action="store_true", help="skip the metrics recorded in the manifest")
    args = parser.parse_args(argv)
    from pathlib import Path

    _, entry = run_recipe(args.recipe, steps=args.steps, time_limit_min=args.minutes,
                          directory=Path(args.out) if args.out else None, evaluate=not args.no_eval)
    print(f"{args.recipe}: {entry['steps_done']} steps in {entry['wall_time_s']:.0f} s on {entry['machine']}; "
          f"metrics {entry['metrics']}; saved {entry['file']} ({entry['bytes'] / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
