"""Every guidance method on one fidelity-diversity frontier, from the same noise (lessons 09 and 11, ``bench frontier``).

Each method is a family of EpsFns indexed by its guidance scale (or, for CFG++, a :class:`Direct` sampler that
needs its own DDIM loop); :func:`measure_frontier` samples every (method, scale) from the same starting noise
with the same steps, and measures class adherence (judge accuracy), FID_judge against as many class-matched
test images, and diversity (lesson 04's definition). :data:`LESSON_09` is the default set; :data:`LESSON_11`
adds APG, CFG++, CFG-Zero*'s optimised scale, autoguidance and the guidance-distilled student.
"""
from __future__ import annotations

import time
from functools import cache
from typing import Callable

import torch
from torch import Tensor, nn

from . import stored, zoo
from .captions import DIGIT_WORDS, zero_shot_templates
from .clip import class_embeddings
from .data import load_mnist
from .guidance import batched_cfg, classifier_grad, grad_guidance, noisy_clip_grad
from .metrics import (
    class_diversity,
    diversity,
    fid_difference_from_features,
    fid_floor,
    fid_judge_interval,
    judge_accuracy,
    judge_features,
    judge_manifold_scores,
    mean_ink,
)
from .samplers import sample_images
from .schedules import NoiseSchedule
from .types import NULL_CLASS, EpsFn
from .variants import apg, autoguidance, cfg_variant, cfg_zero_star, distilled, guided_ddim_sample

__all__ = ["frontier_methods", "measure_frontier", "stored_frontier", "best_points", "format_frontier", "Direct",
           "LESSON_09", "LESSON_11", "METHOD_CHECKPOINTS", "PAIRINGS", "paired_to"]

CFG_SCALES = [1.0, 1.5, 2.0, 3.0, 5.0, 8.0]
MakeEps = Callable[[float, Tensor], EpsFn]  # make(scale, labels) -> EpsFn (or a Direct sampler)
LESSON_09 = ["classifier guidance", "CLIP guidance (noise-aware)", "CFG", "CFG perpendicular (eps)",
             "CFG perpendicular (x0)", "CFG rescale 0.7", "CFG interval t in [200, 800]", "CFG linear schedule"]
LESSON_11 = ["CFG", "APG (eta 0, r 5, momentum -0.5)", "CFG++ (lambda)", "CFG-Zero* optimised scale",
             "autoguidance (guide: mnist-cfg-p0.1)", "distilled student (mnist-cfg-distilled)"]


# the zoo checkpoints each method samples with (the judge measures every one): a stored frontier is tied to them
METHOD_CHECKPOINTS = {
    "classifier guidance": ["mnist-uncond", "mnist-noisy-classifier"],
    "CLIP guidance (noise-aware)": ["mnist-uncond", "mnist-clip", "mnist-clip-noisy"],
    "APG (eta 0, r 5, momentum -0.5)": ["mnist-cfg"], "CFG++ (lambda)": ["mnist-cfg"],
    "CFG-Zero* optimised scale": ["mnist-cfg"],
    "autoguidance (guide: mnist-cfg-p0.1)": ["mnist-cfg", "mnist-cfg-p0.1"],
    "distilled student (mnist-cfg-distilled)": ["mnist-cfg-distilled"],
}


class Direct:
    """A method that samples by itself (CFG++'s own DDIM loop): ``Direct(fn)``, ``fn(noise, steps, clip_x0)``."""

    def __init__(self, fn: Callable[[Tensor, int, bool], Tensor]):
        self.fn = fn

    def __call__(self, noise: Tensor, steps: int, clip_x0: bool) -> Tensor:
        return self.fn(noise, steps, clip_x0).clamp(-1, 1)


def frontier_methods(schedule: NoiseSchedule) -> dict[str, tuple[list[float], MakeEps]]:
    """name -> (scales, make(scale, labels) -> EpsFn) for classifier, CLIP and classifier-free guidance and variants.

    Models load from the zoo on a method's first ``make`` call, so asking for one method loads only its models.
    """
    load: Callable[[str], nn.Module] = cache(zoo.load)

    @cache
    def digit_emb() -> Tensor:
        return class_embeddings(load("mnist-clip"), DIGIT_WORDS, zero_shot_templates())

    def eps_u(x: Tensor, t: Tensor) -> Tensor:
        return load("mnist-uncond")(x, t)

    def variant(**options) -> MakeEps:
        return lambda s, y: cfg_variant(load("mnist-cfg"), y, NULL_CLASS, s, schedule=schedule, **options)

    def classifier(s: float, y: Tensor) -> EpsFn:
        return grad_guidance(eps_u, schedule, classifier_grad(load("mnist-noisy-classifier"), y), s)

    def noisy_clip(s: float, y: Tensor) -> EpsFn:
        return grad_guidance(eps_u, schedule, noisy_clip_grad(load("mnist-clip-noisy"), digit_emb()[y]), s)

    return {
        "classifier guidance": ([1.0, 2.0, 4.0, 8.0, 16.0], classifier),
        "CLIP guidance (noise-aware)": ([10.0, 30.0, 100.0, 300.0], noisy_clip),
        "CFG": (CFG_SCALES, lambda s, y: batched_cfg(load("mnist-cfg"), y, NULL_CLASS, s)),
        "CFG perpendicular (eps)": (CFG_SCALES, variant(parallel=0.0, space="eps")),
        "CFG perpendicular (x0)": (CFG_SCALES, variant(parallel=0.0, space="x0")),
        "CFG rescale 0.7": (CFG_SCALES, variant(rescale=0.7)),
        "CFG interval t in [200, 800]": (CFG_SCALES, variant(interval=(200, 800))),
        "CFG linear schedule": (CFG_SCALES, variant(scale_schedule="linear")),
        # lesson 11
        "APG (eta 0, r 5, momentum -0.5)": (CFG_SCALES, lambda s, y: apg(
            load("mnist-cfg"), y, NULL_CLASS, s, schedule=schedule, eta=0.0, norm_threshold=5.0, momentum=-0.5)),
        "CFG++ (lambda)": ([0.2, 0.4, 0.6, 0.8, 1.0], lambda s, y: Direct(
            lambda noise, steps, clip: guided_ddim_sample(load("mnist-cfg"), y, NULL_CLASS, s, noise, schedule,
                                                          steps=steps, plus_plus=True, clip_x0=clip))),
        "CFG-Zero* optimised scale": (CFG_SCALES, lambda s, y: cfg_zero_star(load("mnist-cfg"), y, NULL_CLASS, s)),
        "autoguidance (guide: mnist-cfg-p0.1)": ([1.0, 1.5, 2.0, 3.0, 5.0], lambda s, y: autoguidance(
            load("mnist-cfg"), load("mnist-cfg-p0.1"), y, s)),
        "distilled student (mnist-cfg-distilled)": (CFG_SCALES, lambda s, y: distilled(
            load("mnist-cfg-distilled"), y, s)),
    }


def _best_pairs(rows: list[dict]) -> list[tuple[int, int]]:
    best = [rows.index(r) for r in best_points(rows).values()]
    return [(i, j) for k, i in enumerate(best) for j in best[k + 1:]]


def _cfg_twins(rows: list[dict]) -> list[tuple[int, int]]:
    cfg = [i for i, r in enumerate(rows) if r["method"] == "CFG"]
    best = [rows.index(r) for name, r in best_points(rows).items() if name != "CFG"]
    return [(i, min(cfg, key=lambda j: abs(rows[j]["adherence"] - rows[i]["adherence"]))) for i in best] if cfg else []


def _same_scale(rows: list[dict]) -> list[tuple[int, int]]:
    cfg = {r["scale"]: i for i, r in enumerate(rows) if r["method"] == "CFG"}
    return [(i, cfg[r["scale"]]) for i, r in enumerate(rows) if r["method"] != "CFG" and r["scale"] in cfg]


# which pairs of frontier points get a paired FID_judge difference (all points share the starting noise)
PAIRINGS: dict[str, Callable[[list[dict]], list[tuple[int, int]]]] = {
    "best points": _best_pairs,  # every two methods' best operating points
    "cfg twin": _cfg_twins,  # each method's best point and the CFG point of closest adherence
    "same scale": _same_scale,  # each point and CFG's at the same scale (where CFG has that scale)
}


def paired_to(row: dict, other: dict):
    """The stored paired difference FID_judge(row) - FID_judge(other) (:func:`measure_frontier`'s ``pairings``)."""
    key = (other["method"], other["scale"])
    if key not in row.get("paired", {}):
        raise KeyError(f"no paired difference of {row['method']} s = {row['scale']:g} against {key[0]} s = "
                       f"{key[1]:g}: measure the frontier with the pairing that makes it (frontier.PAIRINGS).")
    return row["paired"][key]


def measure_frontier(*, n: int = 200, steps: int = 20, seed: int = 0, methods: list[str] | None = None,
                     scales: dict[str, list[float]] | None = None, default_scales: list[float] | None = None,
                     clip_x0: bool = True, keep_samples: bool = False, pairings: tuple[str, ...] = (),
                     progress: bool = False) -> tuple[list[dict], float]:
    """One row per (method, scale): adherence, FID_judge, precision and recall (against the class-matched real set),
    diversity, mean ink, ms per image; plus the FID floor.

    ``row["diversity_by_class"]`` is the diversity within each class (10 values, their mean is ``diversity``), for
    comparisons paired over the classes. ``keep_samples`` keeps each row's images (``row["samples"]``, classes
    ``torch.arange(n) % 10``) for paired
    comparisons between methods, which share the starting noise.

    ``pairings`` (names in :data:`PAIRINGS`) adds ``row["paired"][(method, scale)]``, the paired bootstrap of
    FID_judge(row) - FID_judge(that point) over the shared noise (:func:`paired_to` reads it).

    ``scales`` overrides the scales of named methods; ``default_scales`` those of every other CFG method.
    ``clip_x0`` is the series' static thresholding of x0_hat (on by default; lesson 09 measures both).
    """
    if n < 20 or n % 10:
        raise ValueError(f"n must be a multiple of 10 and at least 20 (10 classes), got {n}.")
    schedule = zoo.schedule_for("mnist-cfg")
    judge, test = zoo.load("mnist-judge"), load_mnist("test")
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 1, 28, 28, generator=gen)
    y = torch.arange(n) % 10
    ref = test.matched(y, seed=seed)  # real digits of exactly the samples' classes
    table = frontier_methods(schedule)
    unknown = (set(methods or []) | set(scales or {})) - set(table)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {sorted(table)}.")
    if set(pairings) - set(PAIRINGS):
        raise ValueError(f"unknown pairings {sorted(set(pairings) - set(PAIRINGS))}; choose from {sorted(PAIRINGS)}.")
    rows, features = [], []
    for name in methods or LESSON_09:
        own, make = table[name]
        if scales and name in scales:
            own = scales[name]
        elif default_scales and name.startswith("CFG"):
            own = default_scales
        for s in own:
            start = time.perf_counter()
            fn = make(s, y)
            if isinstance(fn, Direct):
                xs = fn(noise, steps, clip_x0)
            else:
                xs = sample_images(fn, noise, schedule, steps=steps, clip_x0=clip_x0, progress=progress)
            seconds = time.perf_counter() - start
            ci = fid_judge_interval(judge, xs, ref)
            pr = judge_manifold_scores(judge, xs, ref)
            rows.append({"method": name, "scale": s, "adherence": judge_accuracy(judge, xs, y),
                         "fid_judge": ci.fid, "fid_interval": ci, "precision": pr.precision, "recall": pr.recall,
                         "diversity": class_diversity(judge, xs, y), "ink": mean_ink(xs),
                         "diversity_by_class": torch.tensor([diversity(judge, xs[y == k]) for k in range(10)]),
                         "ms_per_image": 1000 * seconds / n, **({"samples": xs} if keep_samples else {})})
            if pairings:
                features.append(judge_features(judge, xs))
    if pairings:
        ref_features = judge_features(judge, ref)
        for i, j in dict.fromkeys(pair for name in pairings for pair in PAIRINGS[name](rows)):
            rows[i].setdefault("paired", {})[(rows[j]["method"], rows[j]["scale"])] = fid_difference_from_features(
                features[i], features[j], ref_features)
    return rows, fid_floor(judge, test.images, seed=seed, labels=test.labels, matched_to=y)


def stored_frontier(name: str, *, lesson: str, recompute: bool = False, pictures: int = 40,
                    **options) -> tuple[list[dict], float]:
    """:func:`measure_frontier` (its keyword ``options``) as a stored result (:mod:`lessonlib.stored`, lessons 09, 11):
    loaded when stored with the same options and checkpoints, else measured and stored.

    With ``keep_samples=True`` each row keeps its first ``pictures`` samples (8-bit, for showing): measure
    on the full sets inside :func:`measure_frontier`, not on these.
    """
    methods = options.get("methods") or LESSON_09
    known = frontier_methods(None)  # the names only: no model is loaded until a method is made
    if set(methods) - set(known):
        raise ValueError(f"unknown methods {sorted(set(methods) - set(known))}; choose from {sorted(known)}.")
    used = {"mnist-judge", *(c for m in methods for c in METHOD_CHECKPOINTS.get(m, ["mnist-cfg"]))}
    def measure() -> tuple[list[dict], float]:
        rows, floor = measure_frontier(**options)
        for r in rows:  # the numbers are measured on the full samples; the first `pictures` are kept to be shown
            if "samples" in r:
                r["samples"] = stored.Picture(r["samples"][:pictures])
        return rows, floor

    params = {**options, "pictures": pictures} if options.get("keep_samples") else options
    rows, floor = stored.get(name, measure, params=params, checkpoints=sorted(used), lesson=lesson,
                             recompute=recompute, data=repr(load_mnist("test")))
    return rows, floor


def best_points(rows: list[dict], *, min_adherence: float = 0.95) -> dict[str, dict]:
    """Per method: the lowest FID_judge among scales reaching min_adherence, else the most adherent scale."""
    out = {}
    for name in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == name]
        good = [r for r in mine if r["adherence"] >= min_adherence]
        out[name] = min(good, key=lambda r: r["fid_judge"]) if good else max(mine, key=lambda r: r["adherence"])
    return out


def format_frontier(rows: list[dict], floor: float, *, min_adherence: float = 0.95) -> str:
    """The frontier table and the best operating point of each method, as text."""
    w = max(len(r["method"]) for r in rows)
    lines = [f"{'method':{w}s} {'scale':>6s} {'adherence':>10s} {'FID_judge [95% interval]':>25s} {'precision':>9s} "
             f"{'recall':>6s} {'diversity':>10s} {'ink':>6s} {'ms/img':>7s}"]
    lines += [f"{r['method']:{w}s} {r['scale']:6g} {r['adherence']:10.3f} {r['fid_interval']:>25.2f} "
              f"{r['precision']:9.3f} {r['recall']:6.3f} {r['diversity']:10.2f} {r['ink']:6.3f} {r['ms_per_image']:7.1f}"
              for r in rows]
    lines += ["", f"best operating point (lowest FID_judge with adherence >= {min_adherence}, else most adherent); "
                  f"FID floor {floor:.2f}"]
    lines += [f"{name:{w}s} s = {r['scale']:<5g} adherence {r['adherence']:.3f}  FID_judge {r['fid_interval']:.2f}  "
              f"diversity {r['diversity']:.2f}" for name, r in best_points(rows, min_adherence=min_adherence).items()]
    return "\n".join(lines)
