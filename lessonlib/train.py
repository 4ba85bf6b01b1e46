"""One training loop and the course's named recipes: ``python -m lessonlib.train RECIPE`` (lesson 02).

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
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import zoo
from .data import load_cifar10, load_mnist
from .diffusion import denoising_loss, q_sample
from .nets.classifier import JudgeConfig, NoisyClassifierConfig
from .nets.unet import UNetConfig
from .progress import progress_bar
from .schedules import make_schedule

__all__ = ["Recipe", "RECIPES", "TrainResult", "fit", "diffusion_loss_fn", "classifier_loss_fn", "accuracy_by_t",
           "drop_conditions", "load_dataset", "random_shift", "run_recipe", "main"]


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


def drop_conditions(labels: Tensor, p_uncond: float, generator: torch.Generator | None = None) -> Tensor:
    """Replace each label by the null label -1 independently with probability p_uncond (lesson 07)."""
    if not 0 <= p_uncond <= 1:
        raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond}.")
    drop = torch.rand(labels.shape, generator=generator) < p_uncond
    return torch.where(drop.to(labels.device), torch.full_like(labels, -1), labels)


def load_dataset(name: str, split: str):
    """The ImageSet a recipe trains or measures on: ``"mnist"`` or ``"cifar10"``."""
    loaders = {"mnist": load_mnist, "cifar10": load_cifar10}
    if name not in loaders:
        raise ValueError(f"unknown dataset {name!r}; use one of {sorted(loaders)}.")
    return loaders[name](split)


def _batch(images: Tensor, labels: Tensor, size: int, generator: torch.Generator):
    idx = torch.randint(0, len(images), (size,), generator=generator)
    return images[idx], labels[idx]


def diffusion_loss_fn(images: Tensor, labels: Tensor, schedule, *, batch_size: int, conditional: bool,
                      p_uncond: float = 0.0, generator: torch.Generator) -> Callable[[nn.Module, int], Tensor]:
    """Denoising loss on random batches; conditional models see labels dropped to null at rate p_uncond."""
    def loss(model: nn.Module, step: int) -> Tensor:
        x0, y = _batch(images, labels, batch_size, generator)
        cond = drop_conditions(y, p_uncond, generator) if conditional else None
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


@dataclass
class Recipe:
    """Everything that defines a shipped checkpoint's training run."""

    name: str
    task: str  # "diffusion", "judge", "noisy-classifier" or "clean-classifier"
    arch: str
    config: dict
    steps: int
    batch_size: int
    lr: float
    ema_decay: float | None = None
    weight_decay: float = 0.0
    warmup: int = 100
    p_uncond: float = 0.0
    schedule: str = "linear"
    T: int = 1000
    seed: int = 0
    dataset: str = "mnist"  # "mnist" or "cifar10"
    description: str = ""
    extra: dict = field(default_factory=dict)


_MNIST_UNET = UNetConfig(patch_size=2, base_channels=32, channel_mults=(1, 2), attention_resolutions=(7,))
_CIFAR_UNET = replace(_MNIST_UNET, in_channels=3, image_size=32, attention_resolutions=(8,), num_classes=10)

RECIPES: dict[str, Recipe] = {
    "mnist-judge": Recipe(
        "mnist-judge", "judge", "JudgeNet", asdict(JudgeConfig()), steps=3000, batch_size=128, lr=3e-3,
        weight_decay=5e-4, warmup=100,
        description="clean MNIST judge (measurement only): VGG-style CNN, random shifts of up to 2 px"),
    "mnist-uncond": Recipe(
        "mnist-uncond", "diffusion", "UNet", asdict(_MNIST_UNET),
        steps=4500, batch_size=64, lr=2e-3, ema_decay=0.999, warmup=200,
        description="unconditional MNIST eps-model, linear schedule T=1000, 2x2 patches, ~0.76M parameters"),
    "mnist-cfg": Recipe(
        "mnist-cfg", "diffusion", "UNet", asdict(replace(_MNIST_UNET, num_classes=10)),
        steps=4500, batch_size=64, lr=2e-3, ema_decay=0.999, warmup=200, p_uncond=0.1,
        description="class-conditional MNIST eps-model for classifier-free guidance: the mnist-uncond U-Net plus a "
                    "class embedding with a learned null class, labels dropped to null with p_uncond = 0.1"),
    "mnist-noisy-classifier": Recipe(
        "mnist-noisy-classifier", "noisy-classifier", "NoisyClassifier", asdict(NoisyClassifierConfig()),
        steps=6000, batch_size=128, lr=2e-3, weight_decay=1e-4, warmup=100,
        description="noise-aware MNIST classifier f(x_t, t): U-Net encoder + time embedding, trained on "
                    "q_sample(x0, t) with t uniform over the linear T=1000 schedule"),
    "mnist-clean-classifier": Recipe(
        "mnist-clean-classifier", "clean-classifier", "NoisyClassifier", asdict(NoisyClassifierConfig()),
        steps=2500, batch_size=128, lr=2e-3, weight_decay=1e-4, warmup=100,
        description="the same architecture trained on clean x0 only (t = 0): the counter-example of lesson 03"),
}

RECIPES.update({
    "cifar10-judge": Recipe(
        "cifar10-judge", "judge", "JudgeNet", asdict(JudgeConfig(in_channels=3)), steps=2500, batch_size=128,
        lr=3e-3, weight_decay=5e-4, warmup=100, dataset="cifar10",
        description="clean CIFAR-10 judge (measurement only) trained on the 20,000-image JPEG subset: a weak judge"),
    "cifar10-cfg": Recipe(
        "cifar10-cfg", "diffusion", "UNet", asdict(_CIFAR_UNET), steps=3300, batch_size=64, lr=2e-3,
        ema_decay=0.999, warmup=200, p_uncond=0.1, dataset="cifar10", extra={"eval_n": 500},
        description="class-conditional CIFAR-10 eps-model for CFG, 2x2 patches, p_uncond = 0.1: CPU-sized, so blurry"),
})
# the p_uncond ablation of lesson 07: one short budget for every rate (shorter than mnist-cfg, said in the lesson)
for _p in (0.0, 0.1, 0.2, 0.5, 1.0):
    _name = f"mnist-cfg-p{_p:g}"
    RECIPES[_name] = Recipe(
        _name, "diffusion", "UNet", dict(RECIPES["mnist-cfg"].config), steps=1000, batch_size=64, lr=2e-3,
        ema_decay=0.995, warmup=100, p_uncond=_p, extra={"eval_n": 500},
        description=f"p_uncond ablation: the mnist-cfg model with p_uncond = {_p:g}, trained for 1,000 steps only")

CLASSIFIER_EVAL_T = (0, 50, 100, 200, 300, 400, 500, 600, 700, 800, 999)


def accuracy_by_t(classifier: nn.Module, images: Tensor, labels: Tensor, schedule, timesteps=CLASSIFIER_EVAL_T, *,
                  seed: int = 0) -> dict[int, float]:
    """Accuracy of ``classifier(x_t, t)`` on q_sample(images, t) at each timestep (lesson 03)."""
    gen, out = torch.Generator().manual_seed(seed), {}
    with torch.no_grad():
        for t in timesteps:
            tt = torch.full((len(images),), int(t))
            x_t = q_sample(schedule, images, tt, generator=gen)
            pred = torch.cat([classifier(x_t[i:i + 500], tt[i:i + 500]).argmax(1) for i in range(0, len(x_t), 500)])
            out[int(t)] = float((pred == labels).float().mean())
    return out


def _evaluate(recipe: Recipe, model: nn.Module, progress: bool) -> dict:
    """Metrics recorded in the manifest: judge test accuracy, or FID_judge of DDIM-50 samples with its floor."""
    from .bench import generate
    from .metrics import fid_floor, fid_judge, judge_accuracy

    test = load_dataset(recipe.dataset, "test")
    schedule = make_schedule(recipe.schedule, recipe.T)
    if recipe.task == "judge":
        return {"test_accuracy": judge_accuracy(model, test.images, test.labels), "test_images": len(test)}
    if recipe.task.endswith("classifier"):
        return {"test_accuracy_by_t": accuracy_by_t(model, test.images, test.labels, schedule), "test_images": len(test)}
    try:
        judge = zoo.load(f"{recipe.dataset}-judge")
    except zoo.ZooError as exc:
        return {"note": f"no judge to measure with ({exc})"}
    n, gen = recipe.extra.get("eval_n", 1000), torch.Generator().manual_seed(0)
    shape = (model.config.in_channels, model.config.image_size, model.config.image_size)
    ref = test.images[torch.randperm(len(test), generator=gen)[:n]]
    floor = fid_floor(judge, test.images, n)
    if not model.config.num_classes:
        xs, _ = generate(lambda x, t: model(x, t), n, schedule, steps=50, seed=0, shape=shape, progress=progress)
        return {"fid_judge_ddim50": fid_judge(judge, xs, ref), "fid_floor": floor, "n": n}
    from .guidance import batched_cfg

    y = torch.arange(n) % model.config.num_classes
    out = {"fid_floor": floor, "n": n, "sampler": "ddim-25"}
    for scale in (0.0, 1.0, 3.0):
        eps = batched_cfg(model, y, -1, scale)
        xs, _ = generate(eps, n, schedule, steps=25, seed=0, batch=n, shape=shape, progress=progress)
        out[f"cfg{scale:g}"] = {"fid_judge": fid_judge(judge, xs, ref), "adherence": judge_accuracy(judge, xs, y)}
    return out


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
    model = model_cls(config_cls(**recipe.config))
    schedule = make_schedule(recipe.schedule, recipe.T)
    if recipe.task == "diffusion":
        loss_fn = diffusion_loss_fn(train.images, train.labels, schedule, batch_size=recipe.batch_size,
                                    conditional=bool(model.config.num_classes), p_uncond=recipe.p_uncond, generator=gen)
    else:
        loss_fn = classifier_loss_fn(train.images, train.labels, batch_size=recipe.batch_size, generator=gen,
                                     schedule=None if recipe.task == "judge" else schedule,
                                     noised=recipe.task == "noisy-classifier")
    result = fit(model, loss_fn, steps=recipe.steps, lr=recipe.lr, weight_decay=recipe.weight_decay,
                 warmup=recipe.warmup, ema_decay=recipe.ema_decay, progress=progress, desc=name,
                 time_limit_s=None if time_limit_min is None else 60 * time_limit_min)
    metrics = _evaluate(recipe, result.model, progress) if evaluate else {}
    command = " ".join(["python -m lessonlib.train", name] + (sys.argv[2:] if sys.argv[1:2] == [name] else []))
    info = {"recipe": asdict(recipe), "command": command, "data": train.source, "train_images": len(train),
            "steps_done": result.steps, "wall_time_s": round(result.seconds, 1),
            "final_loss": sum(result.losses[-100:]) / len(result.losses[-100:]),
            "parameters": sum(p.numel() for p in result.model.parameters()), "metrics": metrics}
    entry = zoo.save(name, result.model, info=info, directory=directory)
    return result.model, entry


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
