"""What the manifest records about a freshly trained checkpoint, and the measurements lessons share (lessons 02-08).

:func:`evaluate` dispatches on the recipe's task: judge test accuracy, classifier accuracy against t,
CLIP zero-shot accuracies, FID_judge with its floor, CFG adherence, or text adherence per attribute.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from . import zoo
from .captions import measure
from .data import load_cifar10, load_mnist
from .diffusion import q_sample
from .recipes import Recipe
from .schedules import make_schedule

__all__ = ["CLASSIFIER_EVAL_T", "accuracy_by_t", "controlnet_comparison", "evaluate", "load_dataset", "text_adherence", "text_eval_prompts"]


def load_dataset(name: str, split: str):
    """The ImageSet a recipe trains or measures on: ``"mnist"`` or ``"cifar10"``."""
    loaders = {"mnist": load_mnist, "cifar10": load_cifar10}
    if name not in loaders:
        raise ValueError(f"unknown dataset {name!r}; use one of {sorted(loaders)}.")
    return loaders[name](split)


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


def _evaluate_clip(recipe: Recipe, model: nn.Module, test, schedule) -> dict:
    """Zero-shot accuracies (held-out templates, MNIST test and the unseen 8x8 digits); by t for the noisy tower."""
    from .captions import DIGIT_WORDS, zero_shot_templates
    from .clip import class_embeddings, zero_shot
    from .data import load_digits28

    held_out = zero_shot_templates(held_out=True)
    if recipe.task == "clip" and recipe.dataset != "mnist":
        from .captions import CIFAR_HELD_OUT_TEMPLATES, CIFAR_TRAIN_TEMPLATES

        return {"zero_shot_held_out": zero_shot(model, test.images, test.classes, CIFAR_HELD_OUT_TEMPLATES).accuracy(test.labels),
                "zero_shot_train_templates": zero_shot(model, test.images, test.classes,
                                                       CIFAR_TRAIN_TEMPLATES).accuracy(test.labels),
                "test_images": len(test)}
    if recipe.task == "clip":
        digits = load_digits28()
        return {"zero_shot_held_out": zero_shot(model, test.images, DIGIT_WORDS, held_out).accuracy(test.labels),
                "zero_shot_train_templates": zero_shot(model, test.images, DIGIT_WORDS,
                                                       zero_shot_templates(held_out=False)).accuracy(test.labels),
                "zero_shot_numerals": zero_shot(model, test.images, [str(d) for d in range(10)],
                                                held_out).accuracy(test.labels),
                "transfer_digits28": zero_shot(model, digits.images, DIGIT_WORDS, held_out).accuracy(digits.labels),
                "test_images": len(test), "transfer_images": len(digits)}
    clip = zoo.load(recipe.extra["clip"])
    classes = class_embeddings(clip, DIGIT_WORDS, held_out)

    def encoder(x, t):
        return torch.nn.functional.normalize(model(x, t), dim=-1)
    return {"zero_shot_held_out_by_t": accuracy_by_t(lambda x, t: encoder(x, t) @ classes.T, test.images,
                                                      test.labels, schedule),
            "clean_clip_by_t": accuracy_by_t(lambda x, t: clip.encode_image(x.clamp(-1, 1)) @ classes.T, test.images,
                                             test.labels, schedule), "test_images": len(test)}


TEXT_EVAL_WORDS = (None, ("thickness", "thick"), ("thickness", "thin"), ("slant", "left-leaning"),
                   ("slant", "right-leaning"))


def text_eval_prompts(n: int) -> tuple[Tensor, list, list[str]]:
    """Digits (i mod 10), the attribute asked for (cycling through TEXT_EVAL_WORDS per 10) and prompts (lesson 08)."""
    from .captions import caption

    digits = torch.arange(n) % 10
    asked = [TEXT_EVAL_WORDS[(i // 10) % len(TEXT_EVAL_WORDS)] for i in range(n)]
    return digits, asked, [caption(int(d), attributes=(a[1],) if a else ()) for d, a in zip(digits, asked)]


def text_adherence(samples: Tensor, digits: Tensor, asked: list, judge: nn.Module, bins) -> dict:
    """Digit adherence (judge) over all samples; thickness and slant adherence over the samples that asked for one."""
    from .captions import ATTRIBUTE_WORDS
    from .metrics import judge_accuracy

    out = {"digit": judge_accuracy(judge, samples, digits)}
    for attribute in ("thickness", "slant"):
        idx = [i for i, a in enumerate(asked) if a and a[0] == attribute]
        got = bins.word_index(attribute, measure(samples[idx])[attribute])
        want = torch.tensor([ATTRIBUTE_WORDS[attribute].index(asked[i][1]) for i in idx])
        out[attribute] = float((got == want).float().mean())
    return out


def _evaluate_text(model: nn.Module, clip, judge: nn.Module, schedule, n: int, progress: bool) -> dict:
    from .bench import generate
    from .clip import null_condition, text_condition
    from .guidance import batched_cfg

    digits, asked, prompts = text_eval_prompts(n)
    cond = text_condition(clip, prompts)
    out = {}
    for scale in (1.0, 3.0, 5.0):
        xs, _ = generate(batched_cfg(model, cond, null_condition(cond), scale), n, schedule, steps=25, seed=0,
                         batch=n, progress=progress)
        out[f"cfg{scale:g}"] = text_adherence(xs, digits, asked, judge, clip.bins)
    return out


def controlnet_comparison(net: nn.Module, images: Tensor, labels: Tensor, judge: nn.Module, schedule, *,
                          scales=(1.0, 3.0), steps: int = 25, cells: int = 7, seed: int = 0, progress: bool = False) -> dict:
    """Layout IoU and judge adherence of the frozen base and of the ControlNet asked for the layouts of ``images``.

    Same noise, same labels, CFG at each scale (both branches see the hint); ``"real"`` is the IoU of real digits
    of the same class but another image (what the class alone explains), lesson 10.
    """
    from .bench import generate
    from .guidance import batched_cfg
    from .metrics import judge_accuracy, layout_iou
    from .nets.controlnet import coarse_layout

    n, hints = len(images), coarse_layout(images, cells=cells)
    out = {"n": n, "sampler": f"ddim-{steps}"}
    same_class = torch.arange(n)
    for c in labels.unique():
        idx = torch.nonzero(labels == c).flatten()
        same_class[idx] = torch.roll(idx, 1)  # another digit of the same class
    out["real_same_class_iou"] = float(layout_iou(images[same_class], hints, cells=cells).mean())
    for scale in scales:
        for name, eps in (("base", batched_cfg(net.base, labels, -1, scale)),
                          ("controlnet", batched_cfg(net, {"class": labels, "hint": hints}, {"class": -1, "hint": hints},
                                                     scale))):
            xs, _ = generate(eps, n, schedule, steps=steps, seed=seed, batch=n, progress=progress)
            out[f"{name}_cfg{scale:g}"] = {"layout_iou": float(layout_iou(xs, hints, cells=cells).mean()),
                                           "adherence": judge_accuracy(judge, xs, labels)}
    return out


def evaluate(recipe: Recipe, model: nn.Module, progress: bool) -> dict:
    """Metrics recorded in the manifest: judge test accuracy, or FID_judge of DDIM-50 samples with its floor."""
    from .bench import generate
    from .metrics import fid_floor, fid_judge, judge_accuracy

    test = load_dataset(recipe.dataset, "test")
    schedule = make_schedule(recipe.schedule, recipe.T)
    if recipe.task == "judge":
        return {"test_accuracy": judge_accuracy(model, test.images, test.labels), "test_images": len(test)}
    if recipe.task in ("clip", "noisy-clip"):
        return _evaluate_clip(recipe, model, test, schedule)
    if recipe.task.endswith("classifier"):
        return {"test_accuracy_by_t": accuracy_by_t(model, test.images, test.labels, schedule), "test_images": len(test)}
    try:
        judge = zoo.load(f"{recipe.dataset}-judge")
    except zoo.ZooError as exc:
        return {"note": f"no judge to measure with ({exc})"}
    n, gen = recipe.extra.get("eval_n", 1000), torch.Generator().manual_seed(0)
    if recipe.task == "controlnet":
        idx = torch.randperm(len(test), generator=gen)[:n]
        return controlnet_comparison(model, test.images[idx], test.labels[idx], judge, schedule,
                                     cells=recipe.extra["cells"], progress=progress)
    shape = (model.config.in_channels, model.config.image_size, model.config.image_size)
    ref = test.images[torch.randperm(len(test), generator=gen)[:n]]
    floor = fid_floor(judge, test.images, n)
    if recipe.task == "text-diffusion":
        return {**_evaluate_text(model, zoo.load(recipe.extra["clip"]), judge, schedule, n, progress),
                "fid_floor": floor, "n": n, "sampler": "ddim-25"}
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
