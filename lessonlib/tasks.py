"""What each recipe task means: the model it builds, the loss it trains, what the manifest measures (lessons 02-10).

:data:`TASKS` is one table, task name -> :class:`Task`; ``python -m lessonlib.train`` looks a recipe's
task up there instead of dispatching on strings:

| task               | loss (lessonlib.training)                  | measured for the manifest                          |
| ------------------ | ------------------------------------------ | -------------------------------------------------- |
| judge              | CE on shifted clean images                 | test accuracy                                      |
| noisy-classifier   | CE on q_sample(x0, t), t uniform            | test accuracy against t                            |
| clean-classifier   | CE on clean x0 at t = 0                     | test accuracy against t                            |
| clip               | InfoNCE, digit or class captions           | zero-shot accuracies (held-out templates, transfer)|
| noisy-clip         | InfoNCE of (x_t, t) against a frozen text tower | zero-shot accuracy against t, vs clean CLIP    |
| diffusion          | eps MSE, labels dropped at p_uncond        | FID_judge (DDIM-50) or CFG adherence and FID_judge |
| text-diffusion     | eps MSE on CLIP text features              | digit, thickness and slant adherence               |
| controlnet         | eps MSE with a coarse-layout hint          | layout IoU and adherence, against the base         |
| flow               | velocity MSE on the linear path            | as diffusion, with Euler-25                        |
| distill            | MSE to the base's CFG eps at a random s    | adherence and FID_judge at s = 1, 3, 5 vs the base |
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from . import zoo
from .captions import (
    ATTRIBUTE_WORDS,
    CIFAR_HELD_OUT_TEMPLATES,
    CIFAR_TRAIN_TEMPLATES,
    DIGIT_WORDS,
    class_captions,
    fit_bins,
    measure,
    text_eval_prompts,
    zero_shot_templates,
)
from .clip import attribute_auc, class_embeddings, image_features, zero_shot
from .data import ImageSet, load_digits28
from .guidance import batched_cfg
from .metrics import accuracy_by_t, fid_floor, fid_judge, judge_accuracy, layout_iou, text_adherence
from .nets.conditions import null_condition, text_condition
from .recipes import Recipe
from .samplers import sample_images
from .schedules import NoiseSchedule
from .training import (
    classifier_loss_fn,
    clip_loss_fn,
    diffusion_loss_fn,
    digit_caption_fn,
    distill_loss_fn,
    flow_loss_fn,
    text_diffusion_loss_fn,
)
from .transforms import coarse_layout
from .types import NULL_CLASS, LossFn
from .variants import distilled

__all__ = ["Task", "TASKS", "Context", "build_model", "evaluate", "controlnet_comparison"]


@dataclass
class Context:
    """What a task's loss and evaluator may read: the recipe, its schedule, the zoo to load helpers from."""

    recipe: Recipe
    schedule: NoiseSchedule
    directory: Path | None = None  # the zoo (default: the shipped checkpoints)
    progress: bool = False

    def load(self, name: str) -> nn.Module:
        return zoo.load(name, directory=self.directory)


@dataclass(frozen=True)
class Task:
    """A task's two halves: ``loss(ctx, model, train, generator) -> LossFn`` and ``evaluate(ctx, model, test)``."""

    loss: Callable[[Context, nn.Module, ImageSet, torch.Generator], LossFn]
    evaluate: Callable[[Context, nn.Module, ImageSet], dict]


def build_model(ctx: Context) -> nn.Module:
    """A fresh model for the recipe: its architecture and config, or a ControlNet around its frozen base."""
    model_cls, config_cls = zoo.ARCHITECTURES[ctx.recipe.arch]
    if ctx.recipe.task == "controlnet":
        return model_cls.from_base(ctx.load(ctx.recipe.base))
    model = model_cls(config_cls(**ctx.recipe.config))
    if ctx.recipe.task == "distill":  # the student starts as its teacher; the new scale embedding starts at zero
        if not getattr(model.config, "scale_range", None):
            raise ValueError(f"recipe {ctx.recipe.name!r}: a distill recipe's U-Net config needs scale_range=(lo, hi), "
                             "the guidance scales the student learns.")
        missing, unexpected = model.load_state_dict(ctx.load(ctx.recipe.base).state_dict(), strict=False)
        if unexpected or any(not k.startswith("scale_mlp.") for k in missing):
            raise ValueError(f"the student's config must be its teacher's plus scale_range; missing {missing}, "
                             f"unexpected {unexpected}.")
    return model


# ---- losses: each builds the LossFn that lessonlib.training.fit minimises --------------------------------------

def _classifier_loss(kind: str):
    def loss(ctx: Context, model: nn.Module, train: ImageSet, gen: torch.Generator) -> LossFn:
        return classifier_loss_fn(train.images, train.labels, batch_size=ctx.recipe.batch_size, generator=gen,
                                  schedule=None if kind == "judge" else ctx.schedule, noised=kind == "noisy",
                                  hflip=ctx.recipe.hflip)
    return loss


def _diffusion_loss(ctx: Context, model: nn.Module, train: ImageSet, gen: torch.Generator) -> LossFn:
    return diffusion_loss_fn(train.images, train.labels, ctx.schedule, batch_size=ctx.recipe.batch_size,
                             conditional=bool(model.config.num_classes), p_uncond=ctx.recipe.p_uncond, generator=gen,
                             min_snr_gamma=ctx.recipe.min_snr_gamma)


def _flow_loss(ctx: Context, model: nn.Module, train: ImageSet, gen: torch.Generator) -> LossFn:
    return flow_loss_fn(train.images, train.labels, batch_size=ctx.recipe.batch_size, p_uncond=ctx.recipe.p_uncond,
                        generator=gen)


def _distill_loss(ctx: Context, model: nn.Module, train: ImageSet, gen: torch.Generator) -> LossFn:
    teacher = ctx.load(ctx.recipe.base).eval().requires_grad_(False)
    return distill_loss_fn(teacher, train.images, train.labels, ctx.schedule, batch_size=ctx.recipe.batch_size,
                           scale_range=model.config.scale_range, generator=gen)


def _controlnet_loss(ctx: Context, model: nn.Module, train: ImageSet, gen: torch.Generator) -> LossFn:
    cells = ctx.recipe.layout_cells
    return diffusion_loss_fn(train.images, train.labels, ctx.schedule, batch_size=ctx.recipe.batch_size,
                             conditional=True, p_uncond=ctx.recipe.p_uncond, generator=gen,
                             hint=lambda x0: coarse_layout(x0, cells=cells), min_snr_gamma=ctx.recipe.min_snr_gamma)


def _clip_loss(ctx: Context, model: nn.Module, train: ImageSet, gen: torch.Generator) -> LossFn:
    """Digits get captions of their measured attributes (bins fitted here, saved with the model); other data
    sets get class-name captions."""
    if ctx.recipe.dataset == "mnist":
        model.set_bins(fit_bins(train.images))
        r = ctx.recipe
        withheld = {"withhold_digit": r.withhold_digit, "withhold_pair": r.withhold_pair}
        captions = digit_caption_fn(train.images, train.labels, model.bins, generator=gen, p_attribute=r.p_attribute,
                                    p_digit=r.p_digit, **{k: v for k, v in withheld.items() if v is not None})
    else:
        captions = lambda idx: class_captions(train.labels[idx], train.classes, generator=gen)  # noqa: E731
    return clip_loss_fn(train.images, batch_size=ctx.recipe.batch_size, generator=gen, caption_fn=captions)


def _noisy_clip_loss(ctx: Context, model: nn.Module, train: ImageSet, gen: torch.Generator) -> LossFn:
    clip = ctx.load(ctx.recipe.clip)
    return clip_loss_fn(train.images, batch_size=ctx.recipe.batch_size, generator=gen,
                        caption_fn=digit_caption_fn(train.images, train.labels, clip.bins, generator=gen),
                        text_encoder=clip.encode_text, schedule=ctx.schedule, logit_scale=clip.logit_scale.item())


def _text_diffusion_loss(ctx: Context, model: nn.Module, train: ImageSet, gen: torch.Generator) -> LossFn:
    r = ctx.recipe
    return text_diffusion_loss_fn(train.images, train.labels, ctx.schedule, clip=ctx.load(r.clip),
                                  batch_size=r.batch_size, p_uncond=r.p_uncond, generator=gen,
                                  p_attribute=r.p_attribute, p_digit=r.p_digit, tokens=_reads_tokens(model),
                                  min_snr_gamma=r.min_snr_gamma)


def _reads_tokens(model: nn.Module) -> bool:
    """Does this U-Net read per-token text features (cross-attention), or the pooled embedding alone?"""
    return bool(model.config.context_dim)


# ---- evaluators: what the manifest records about a freshly trained checkpoint ------------------------------------

def _eval_judge(ctx: Context, model: nn.Module, test: ImageSet) -> dict:
    return {"test_accuracy": judge_accuracy(model, test.images, test.labels), "test_images": len(test)}


def _eval_classifier(ctx: Context, model: nn.Module, test: ImageSet) -> dict:
    return {"test_accuracy_by_t": accuracy_by_t(model, test.images, test.labels, ctx.schedule),
            "test_images": len(test)}


def _eval_clip(ctx: Context, model: nn.Module, test: ImageSet) -> dict:
    """Zero-shot accuracies: held-out and training templates; for digits also numerals and unseen 8x8 digits."""
    if ctx.recipe.dataset != "mnist":
        return {"zero_shot_held_out": zero_shot(model, test.images, test.classes,
                                                CIFAR_HELD_OUT_TEMPLATES).accuracy(test.labels),
                "zero_shot_train_templates": zero_shot(model, test.images, test.classes,
                                                       CIFAR_TRAIN_TEMPLATES).accuracy(test.labels),
                "test_images": len(test)}
    digits, held_out = load_digits28(), zero_shot_templates(held_out=True)
    return {**_eval_withheld(ctx, model, test, held_out),
            "zero_shot_held_out": zero_shot(model, test.images, DIGIT_WORDS, held_out).accuracy(test.labels),
            "zero_shot_train_templates": zero_shot(model, test.images, DIGIT_WORDS,
                                                   zero_shot_templates(held_out=False)).accuracy(test.labels),
            "zero_shot_numerals": zero_shot(model, test.images, [str(d) for d in range(10)],
                                            held_out).accuracy(test.labels),
            "transfer_digits28": zero_shot(model, digits.images, DIGIT_WORDS, held_out).accuracy(digits.labels),
            "test_images": len(test), "transfer_images": len(digits)}


def _eval_withheld(ctx: Context, model: nn.Module, test: ImageSet, templates) -> dict:
    """What a CLIP never read in its captions: zero-shot accuracy on the withheld digit and on the others,
    and the AUC of ranking the withheld (word, digit) pair's attribute by text (lesson 05)."""
    r, out = ctx.recipe, {}
    if r.withhold_digit is not None:
        pred = zero_shot(model, test.images, DIGIT_WORDS, templates).pred
        mine = test.labels == r.withhold_digit
        out["zero_shot_withheld_digit"] = float((pred[mine] == r.withhold_digit).float().mean())
        out["zero_shot_other_digits"] = float((pred[~mine] == test.labels[~mine]).float().mean())
    if r.withhold_pair:
        word, digit = r.withhold_pair
        attribute = next(a for a, ws in ATTRIBUTE_WORDS.items() if word in ws)
        low = next(w for w in (ATTRIBUTE_WORDS[attribute][0], ATTRIBUTE_WORDS[attribute][-1]) if w != word)
        mine = test.images[test.labels == digit]
        words = model.bins.words(measure(mine))[attribute]
        auc, half = attribute_auc(model, image_features(model, mine), words, DIGIT_WORDS[digit], low, word, templates)
        out["withheld_pair_auc"] = [auc, half]
    return out


def _eval_noisy_clip(ctx: Context, model: nn.Module, test: ImageSet) -> dict:
    """Zero-shot accuracy against t of the noise-aware tower, and of the clean CLIP reading x_t, for contrast."""
    clip = ctx.load(ctx.recipe.clip)
    classes = class_embeddings(clip, DIGIT_WORDS, zero_shot_templates(held_out=True))

    def noisy(x: Tensor, t: Tensor) -> Tensor:
        return torch.nn.functional.normalize(model(x, t), dim=-1) @ classes.T

    def clean(x: Tensor, t: Tensor) -> Tensor:
        return clip.encode_image(x.clamp(-1, 1)) @ classes.T

    return {"zero_shot_held_out_by_t": accuracy_by_t(noisy, test.images, test.labels, ctx.schedule),
            "clean_clip_by_t": accuracy_by_t(clean, test.images, test.labels, ctx.schedule),
            "test_images": len(test)}


def _judge_or_note(ctx: Context) -> nn.Module | dict:
    try:
        return ctx.load(f"{ctx.recipe.dataset}-judge")
    except zoo.ZooError as exc:
        return {"note": f"no judge to measure with ({exc})"}


def _eval_diffusion(ctx: Context, model: nn.Module, test: ImageSet) -> dict:
    """Unconditional: FID_judge of DDIM-50 samples. Class-conditional: FID_judge and adherence at s = 0, 1, 3
    with DDIM-25, or Euler-25 for a flow-matching (velocity) model."""
    judge = _judge_or_note(ctx)
    if isinstance(judge, dict):
        return judge
    n, c = ctx.recipe.eval_n, model.config
    shape = (c.in_channels, c.image_size, c.image_size)
    ref = test.images[torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:n]]
    floor = fid_floor(judge, test.images, n)
    if not c.num_classes:
        xs = sample_images(lambda x, t: model(x, t), n, ctx.schedule, steps=50, shape=shape, progress=ctx.progress)
        return {"fid_judge_ddim50": fid_judge(judge, xs, ref), "fid_floor": floor, "n": n}
    y = torch.arange(n) % c.num_classes
    method = "euler" if c.prediction == "velocity" else "ddim"
    out = {"fid_floor": floor, "n": n, "sampler": f"{method}-25"}
    for scale in (0.0, 1.0, 3.0):
        xs = sample_images(batched_cfg(model, y, NULL_CLASS, scale), n, ctx.schedule, steps=25, batch=n, shape=shape,
                           method=method, progress=ctx.progress)
        out[f"cfg{scale:g}"] = {"fid_judge": fid_judge(judge, xs, ref), "adherence": judge_accuracy(judge, xs, y)}
    return out


def _eval_text_diffusion(ctx: Context, model: nn.Module, test: ImageSet) -> dict:
    """Digit, thickness and slant adherence at s = 1, 3, 5 (DDIM-25), and the FID floor at the same N."""
    judge = _judge_or_note(ctx)
    if isinstance(judge, dict):
        return judge
    clip, n = ctx.load(ctx.recipe.clip), ctx.recipe.eval_n
    digits, asked, prompts = text_eval_prompts(n)
    cond = text_condition(clip, prompts, tokens=_reads_tokens(model))
    out = {}
    for scale in (1.0, 3.0, 5.0):
        xs = sample_images(batched_cfg(model, cond, null_condition(cond), scale), n, ctx.schedule, steps=25, batch=n,
                           progress=ctx.progress)
        out[f"cfg{scale:g}"] = text_adherence(xs, digits, asked, judge, clip.bins)
    return {**out, "fid_floor": fid_floor(judge, test.images, n), "n": n, "sampler": "ddim-25"}


def controlnet_comparison(net: nn.Module, images: Tensor, labels: Tensor, judge: nn.Module, schedule: NoiseSchedule,
                          *, scales=(1.0, 3.0), steps: int = 25, cells: int = 7, seed: int = 0,
                          progress: bool = False) -> dict:
    """Layout IoU and judge adherence of the frozen base and of the ControlNet asked for the layouts of ``images``.

    Same noise, same labels, CFG at each scale (both branches see the hint); ``"real"`` is the IoU of real digits
    of the same class but another image (what the class alone explains), lesson 10.
    """
    n, hints = len(images), coarse_layout(images, cells=cells)
    out = {"n": n, "sampler": f"ddim-{steps}"}
    same_class = torch.arange(n)
    for c in labels.unique():
        idx = torch.nonzero(labels == c).flatten()
        same_class[idx] = torch.roll(idx, 1)  # another digit of the same class
    out["real_same_class_iou"] = float(layout_iou(images[same_class], hints, cells=cells).mean())
    null = {"class": NULL_CLASS, "hint": hints}
    for scale in scales:
        for name, eps in (("base", batched_cfg(net.base, labels, NULL_CLASS, scale)),
                          ("controlnet", batched_cfg(net, {"class": labels, "hint": hints}, null, scale))):
            xs = sample_images(eps, n, schedule, steps=steps, seed=seed, batch=n, progress=progress)
            out[f"{name}_cfg{scale:g}"] = {"layout_iou": float(layout_iou(xs, hints, cells=cells).mean()),
                                           "adherence": judge_accuracy(judge, xs, labels)}
    return out


def _eval_distill(ctx: Context, model: nn.Module, test: ImageSet) -> dict:
    """Student (one pass per step) and teacher (CFG, two) from the same noise: adherence and FID_judge, DDIM-25."""
    judge = _judge_or_note(ctx)
    if isinstance(judge, dict):
        return judge
    n, teacher = ctx.recipe.eval_n, ctx.load(ctx.recipe.base)
    y = torch.arange(n) % model.config.num_classes
    ref = test.matched(y, seed=0)
    out = {"fid_floor": fid_floor(judge, test.images, labels=test.labels, matched_to=y), "n": n,
           "sampler": "ddim-25", "reference": "class-matched"}
    for scale in (1.0, 3.0, 5.0):
        for who, fn in (("student", distilled(model, y, scale)),
                        ("teacher", batched_cfg(teacher, y, NULL_CLASS, scale))):
            xs = sample_images(fn, n, ctx.schedule, steps=25, batch=n, progress=ctx.progress)
            out[f"{who}{scale:g}"] = {"fid_judge": fid_judge(judge, xs, ref), "adherence": judge_accuracy(judge, xs, y)}
    return out


def _eval_controlnet(ctx: Context, model: nn.Module, test: ImageSet) -> dict:
    judge = _judge_or_note(ctx)
    if isinstance(judge, dict):
        return judge
    idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:ctx.recipe.eval_n]
    return controlnet_comparison(model, test.images[idx], test.labels[idx], judge, ctx.schedule,
                                 cells=ctx.recipe.layout_cells, progress=ctx.progress)


TASKS: dict[str, Task] = {
    "judge": Task(_classifier_loss("judge"), _eval_judge),
    "noisy-classifier": Task(_classifier_loss("noisy"), _eval_classifier),
    "clean-classifier": Task(_classifier_loss("clean"), _eval_classifier),
    "clip": Task(_clip_loss, _eval_clip),
    "noisy-clip": Task(_noisy_clip_loss, _eval_noisy_clip),
    "diffusion": Task(_diffusion_loss, _eval_diffusion),
    "flow": Task(_flow_loss, _eval_diffusion),
    "text-diffusion": Task(_text_diffusion_loss, _eval_text_diffusion),
    "controlnet": Task(_controlnet_loss, _eval_controlnet),
    "distill": Task(_distill_loss, _eval_distill),
}


def evaluate(ctx: Context, model: nn.Module, test: ImageSet) -> dict:
    """The metrics the manifest records for a model trained by ``ctx.recipe`` (its task's evaluator)."""
    return TASKS[ctx.recipe.task].evaluate(ctx, model, test)
