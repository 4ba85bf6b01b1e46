"""Every guidance method on one fidelity-diversity frontier, from the same noise (lesson 09, ``bench frontier``).

Each method is a family of EpsFns indexed by its guidance scale; :func:`measure_frontier` samples every
(method, scale) from the same starting noise with the same sampler and steps, and measures class adherence
(judge accuracy), FID_judge against as many test images, and diversity (lesson 04's definition).
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch import Tensor

from . import zoo
from .data import load_mnist
from .guidance import EpsFn, batched_cfg, classifier_grad, clip_grad, grad_guidance
from .metrics import class_diversity, fid_floor, fid_judge, judge_accuracy
from .samplers import sample
from .schedules import make_schedule
from .variants import cfg_variant

__all__ = ["frontier_methods", "measure_frontier", "best_points", "format_frontier"]

CFG_SCALES = [1.0, 1.5, 2.0, 3.0, 5.0, 8.0]


def frontier_methods(schedule) -> dict[str, tuple[list[float], Callable[[float, Tensor], EpsFn]]]:
    """name -> (scales, make(scale, labels) -> EpsFn) for classifier, CLIP and classifier-free guidance and variants."""
    from .captions import DIGIT_WORDS, zero_shot_templates
    from .clip import class_embeddings

    uncond, cfg_model = zoo.load("mnist-uncond"), zoo.load("mnist-cfg")
    classifier, clip, noisy_clip = zoo.load("mnist-noisy-classifier"), zoo.load("mnist-clip"), zoo.load("mnist-clip-noisy")
    digit_emb = class_embeddings(clip, DIGIT_WORDS, zero_shot_templates())
    eps_u = lambda x, t: uncond(x, t)  # noqa: E731

    def variant(**options):
        return lambda s, y: cfg_variant(cfg_model, y, -1, s, schedule=schedule, **options)

    return {
        "classifier guidance": ([1.0, 2.0, 4.0, 8.0, 16.0],
                                lambda s, y: grad_guidance(eps_u, schedule, classifier_grad(classifier, y), s)),
        "CLIP guidance (noise-aware)": ([10.0, 30.0, 100.0, 300.0],
                                        lambda s, y: grad_guidance(eps_u, schedule, clip_grad(noisy_clip, digit_emb[y]), s)),
        "CFG": (CFG_SCALES, lambda s, y: batched_cfg(cfg_model, y, -1, s)),
        "CFG perpendicular (eps)": (CFG_SCALES, variant(parallel=0.0, space="eps")),
        "CFG perpendicular (x0)": (CFG_SCALES, variant(parallel=0.0, space="x0")),
        "CFG rescale 0.7": (CFG_SCALES, variant(rescale=0.7)),
        "CFG interval t in [200, 800]": (CFG_SCALES, variant(interval=(200, 800))),
        "CFG linear schedule": (CFG_SCALES, variant(scale_schedule="linear")),
    }


def measure_frontier(*, n: int = 200, steps: int = 20, seed: int = 0, methods: list[str] | None = None,
                     scales: dict[str, list[float]] | None = None, default_scales: list[float] | None = None,
                     progress: bool = False) -> tuple[list[dict], float]:
    """One row per (method, scale): adherence, FID_judge, diversity, ms per image; plus the FID floor at n.

    ``scales`` overrides the scales of named methods; ``default_scales`` those of every other CFG method.
    """
    if n < 20 or n % 10:
        raise ValueError(f"n must be a multiple of 10 and at least 20 (10 classes), got {n}.")
    schedule = make_schedule("linear", 1000)
    judge, test = zoo.load("mnist-judge"), load_mnist("test")
    gen = torch.Generator().manual_seed(seed)
    ref = test.images[torch.randperm(len(test), generator=gen)[:n]]
    noise = torch.randn(n, 1, 28, 28, generator=gen)
    y = torch.arange(n) % 10
    table = frontier_methods(schedule)
    unknown = (set(methods or []) | set(scales or {})) - set(table)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {sorted(table)}.")
    rows = []
    for name in methods or list(table):
        own, make = table[name]
        if scales and name in scales:
            own = scales[name]
        elif default_scales and name.startswith("CFG"):
            own = default_scales
        for s in own:
            start = time.perf_counter()
            xs = sample(make(s, y), noise, schedule, steps=steps, clip_x0=True, progress=progress).clamp(-1, 1)
            seconds = time.perf_counter() - start
            rows.append({"method": name, "scale": s, "adherence": judge_accuracy(judge, xs, y),
                         "fid_judge": fid_judge(judge, xs, ref),
                         "diversity": class_diversity(judge, xs, y),
                         "ms_per_image": 1000 * seconds / n})
    return rows, fid_floor(judge, test.images, n)


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
    lines = [f"{'method':30s} {'scale':>6s} {'adherence':>10s} {'FID_judge':>10s} {'diversity':>10s} {'ms/img':>7s}"]
    lines += [f"{r['method']:30s} {r['scale']:6g} {r['adherence']:10.3f} {r['fid_judge']:10.2f} {r['diversity']:10.2f} "
              f"{r['ms_per_image']:7.1f}" for r in rows]
    lines += ["", f"best operating point (lowest FID_judge with adherence >= {min_adherence}, else most adherent); "
                  f"FID floor {floor:.2f}"]
    lines += [f"{name:30s} s = {r['scale']:<5g} adherence {r['adherence']:.3f}  FID_judge {r['fid_judge']:.2f}  "
              f"diversity {r['diversity']:.2f}" for name, r in best_points(rows, min_adherence=min_adherence).items()]
    return "\n".join(lines)
