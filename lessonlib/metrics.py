"""Measurements used across the course (every definition is written out below and in the README).

- judge accuracy: share of samples the clean judge classifies as the requested class;
- FID_judge: Frechet distance between Gaussians fitted to judge features of samples and of real
  test images (always report N, and the real-vs-real floor at the same N);
- diversity: mean pairwise L2 distance between judge features of samples of one class;
- energy distance: a sample distance for the 2-D toy (lesson 01);
- layout IoU: overlap of the inked cells of a coarse layout asked for and the one produced (lesson 10);
- accuracy against t: a classifier of (x_t, t) on noised test images (lessons 03, 05, 06);
- text adherence: digit (judge), thickness and slant (measured) against the prompt (lesson 08);
- reference agreement: per sample, what it shares with a reference digit: class (judge), thickness and slant
  tertile, coarse layout IoU and pixel ink IoU (lesson 08);
- precision / recall, density / coverage: fidelity and diversity as separate numbers, from k-nearest-neighbour
  balls around judge features of real and generated images (Kynkaanniemi et al. 2019; Naeem et al. 2020);
- mean_interval: a mean with the half-width of its normal-approximation 95% interval.
- proportion_interval: a share k / n with its Wilson 95% interval (lesson 11's outlier and branch counts).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .captions import ATTRIBUTE_WORDS, AttributeBins, measure
from .diffusion import q_sample
from .schedules import NoiseSchedule
from .stats import PairedDifference, auc_interval, format_interval, matched_indices, mean_interval, proportion_interval
from .transforms import coarse_layout

__all__ = ["energy_distance", "judge_features", "judge_accuracy", "frechet_distance", "fid_judge",
           "fid_floor", "FidInterval", "fid_judge_interval", "fid_difference_interval", "fid_difference_from_features",
           "judge_predictions", "diversity",
           "class_diversity", "layout_iou", "CLASSIFIER_EVAL_T", "accuracy_by_t", "text_adherence",
           "reference_agreement", "mean_interval", "proportion_interval", "auc_interval", "mean_ink", "colour_look",
           "ManifoldScores", "manifold_scores", "judge_manifold_scores"]


def energy_distance(a: Tensor, b: Tensor) -> float:
    """Energy distance 2 E|A-B| - E|A-A'| - E|B-B'| between two samples (N, D); 0 iff same law (lesson 01).

    Uses the unbiased within-sample means (diagonal excluded), so two samples of one law give ~0.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"energy_distance needs two (N, D) samples with the same D and N >= 2, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}.")
    a, b = a.double(), b.double()
    within = lambda s: torch.cdist(s, s).sum() / (len(s) * (len(s) - 1))  # noqa: E731
    return float(2 * torch.cdist(a, b).mean() - within(a) - within(b))


@torch.no_grad()
def _batched(fn, images: Tensor, batch: int) -> Tensor:
    return torch.cat([fn(images[i:i + batch]) for i in range(0, len(images), batch)])


def judge_features(judge: nn.Module, images: Tensor, *, batch: int = 500) -> Tensor:
    """Judge penultimate features of images in [-1, 1], (N, D) float64 on the CPU (lesson 02)."""
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W) in [-1, 1], got shape {tuple(images.shape)}.")
    judge.eval()
    return _batched(lambda x: judge.features(x).double().cpu(), images, batch)  # the judge follows its inputs


def judge_accuracy(judge: nn.Module, images: Tensor, labels, *, batch: int = 500) -> float:
    """Share of images that the judge assigns to the requested class (class adherence) (lesson 02)."""
    labels = torch.as_tensor(labels).reshape(-1).expand(len(images)).cpu()
    hits = int((judge_predictions(judge, images, batch=batch) == labels).sum())
    return hits / len(images)  # exact in double precision: 95 of 100 is 0.95, not float32's 0.9499999


def judge_predictions(judge: nn.Module, images: Tensor, *, batch: int = 500) -> Tensor:
    """The judge's class for each image, (N,) on the CPU."""
    judge.eval()
    return _batched(lambda x: judge(x).argmax(1).cpu(), images, batch)


def frechet_distance(f1: Tensor, f2: Tensor) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2) between Gaussians fitted to two feature sets."""
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1] or min(len(f1), len(f2)) < 2:
        raise ValueError("frechet_distance needs two (N, D) feature sets with the same D and N >= 2.")
    f1, f2 = f1.double(), f2.double()
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = torch.cov(f1.T), torch.cov(f2.T)
    evals, evecs = torch.linalg.eigh(s1)
    s1_half = evecs @ torch.diag(evals.clamp(min=0).sqrt()) @ evecs.T
    cross = torch.linalg.eigvalsh(s1_half @ s2 @ s1_half).clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).pow(2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * cross)


def fid_judge(judge: nn.Module, samples: Tensor, reference: Tensor) -> float:
    """FID_judge: Frechet distance of judge features, samples vs real reference images (state N) (lesson 02)."""
    return frechet_distance(judge_features(judge, samples), judge_features(judge, reference))


@dataclass(frozen=True)
class FidInterval:
    """FID_judge with its approximate 95% interval (see :func:`fid_judge_interval`)."""

    fid: float
    lo: float
    hi: float
    n_boot: int

    def separated_from(self, other: "FidInterval") -> bool:
        """True when the two intervals do not overlap: only then call one FID_judge lower than the other."""
        return self.hi < other.lo or other.hi < self.lo

    def compare(self, other: "FidInterval") -> str:
        """'first lower', 'second lower' (self is first) or 'not distinguishable' when the intervals overlap."""
        if not self.separated_from(other):
            return "not distinguishable"
        return "first lower" if self.fid < other.fid else "second lower"

    def __format__(self, spec: str) -> str:
        """``f"{ci:>24.2f}"``: the number format applies to each value, the width and alignment to the whole."""
        return format_interval(self.fid, self.lo, self.hi, spec, default=".2f", kind="an FidInterval")


def fid_judge_interval(judge: nn.Module, samples: Tensor, reference: Tensor, *, n_boot: int = 100,
                       z: float = 1.96, seed: int = 0) -> FidInterval:
    """FID_judge with an approximate 95% interval, FID +- z * sd, sd the standard deviation of FID_judge over
    ``n_boot`` bootstrap resamples of both sets (lessons 02, 04, 07, 09).

    Not the bootstrap's percentiles: resampling with replacement repeats images, which biases every resampled FID
    upwards, so the percentiles can miss the value itself; their spread is the usable part. At the lessons' N
    (100-1000) the interval is a good fraction of the real-vs-real floor: call a difference only where intervals
    separate.
    """
    if n_boot < 10 or not z > 0:
        raise ValueError(f"need n_boot >= 10 and z > 0, got n_boot={n_boot}, z={z}.")
    fs, fr = judge_features(judge, samples), judge_features(judge, reference)
    gen = torch.Generator().manual_seed(seed)
    boot = torch.tensor([frechet_distance(fs[torch.randint(0, len(fs), (len(fs),), generator=gen)],
                                          fr[torch.randint(0, len(fr), (len(fr),), generator=gen)])
                         for _ in range(n_boot)])
    fid, half = frechet_distance(fs, fr), z * float(boot.std())
    return FidInterval(fid, max(0.0, fid - half), fid + half, n_boot)


def fid_difference_interval(judge: nn.Module, samples_a: Tensor, samples_b: Tensor, reference: Tensor, *,
                            n_boot: int = 200, z: float = 1.96, seed: int = 0) -> PairedDifference:
    """FID_judge(a) - FID_judge(b) for two arms sampled from the same noise, with a paired bootstrap 95% interval:
    each resample draws the same sample indices for both arms (pair i shares its noise) and one reference resample,
    so what the arms share cancels. The interval is the difference +- z sd of the resampled differences (as in
    :func:`fid_judge_interval`, the bootstrap's upward bias is in both arms and cancels in the difference)."""
    if len(samples_a) != len(samples_b):
        raise ValueError(f"paired arms need the same number of samples, got {len(samples_a)} and {len(samples_b)}.")
    features = (judge_features(judge, x) for x in (samples_a, samples_b, reference))
    return fid_difference_from_features(*features, n_boot=n_boot, z=z, seed=seed)


def fid_difference_from_features(features_a: Tensor, features_b: Tensor, reference: Tensor, *, n_boot: int = 200,
                                 z: float = 1.96, seed: int = 0) -> PairedDifference:
    """:func:`fid_difference_interval` from the judge's features of the two arms and of the reference (row i of
    both arms shares its noise): for a sweep that keeps features, not images."""
    if len(features_a) != len(features_b):
        raise ValueError(f"paired arms need the same number of samples, got {len(features_a)} and "
                         f"{len(features_b)}.")
    if n_boot < 10 or not z > 0:
        raise ValueError(f"need n_boot >= 10 and z > 0, got n_boot={n_boot}, z={z}.")
    fa, fb, fr = (f.double() for f in (features_a, features_b, reference))
    gen = torch.Generator().manual_seed(seed)
    diffs = []
    for _ in range(n_boot):
        i = torch.randint(0, len(fa), (len(fa),), generator=gen)
        r = fr[torch.randint(0, len(fr), (len(fr),), generator=gen)]
        diffs.append(frechet_distance(fa[i], r) - frechet_distance(fb[i], r))
    diff, half = frechet_distance(fa, fr) - frechet_distance(fb, fr), z * float(torch.tensor(diffs).std())
    return PairedDifference(diff, diff - half, diff + half, len(fa), "paired bootstrap of FID_judge")


def fid_floor(judge: nn.Module, test_images: Tensor, n: int | None = None, *, seed: int = 0,
              labels: Tensor | None = None, matched_to=None) -> float:
    """Real-vs-real FID_judge between two disjoint sets of test images, n each (lesson 02).

    By default the two sets are random halves. For class-conditional samples give the test ``labels`` and
    the samples' labels as ``matched_to``: each set then has exactly those classes (lessons 04, 07, 09), the
    floor that matches a class-matched reference set (:meth:`lessonlib.data.ImageSet.matched`).
    """
    if (labels is None) != (matched_to is None):
        raise ValueError("give both labels= (the test labels) and matched_to= (the samples' labels), or neither.")
    if matched_to is not None:
        if n is not None and n != len(matched_to):
            raise ValueError(f"n = {n} but matched_to has {len(matched_to)} labels; leave n out.")
        a, b = matched_indices(labels, matched_to, copies=2, seed=seed)
        return fid_judge(judge, test_images[a], test_images[b])
    if n is None:
        raise ValueError("give n, the number of images in each real set.")
    if 2 * n > len(test_images):
        raise ValueError(f"the floor needs 2 * n = {2 * n} test images, only {len(test_images)} available.")
    order = torch.randperm(len(test_images), generator=torch.Generator().manual_seed(seed))
    return fid_judge(judge, test_images[order[:n]], test_images[order[n:2 * n]])


def diversity(judge: nn.Module, samples: Tensor) -> float:
    """Mean pairwise L2 distance between judge features of samples (one class at a time) (lesson 04)."""
    f = judge_features(judge, samples)
    n = len(f)
    if n < 2:
        raise ValueError("diversity needs at least two samples.")
    return float(torch.cdist(f, f).sum() / (n * (n - 1)))


def class_diversity(judge: nn.Module, samples: Tensor, labels) -> float:
    """:func:`diversity` within each requested class, averaged over the classes (lessons 04, 06, 07, 09, 10)."""
    labels = torch.as_tensor(labels)
    if labels.shape != samples.shape[:1]:
        raise ValueError(f"give one label per sample: {tuple(labels.shape)} labels for {len(samples)} samples.")
    classes = labels.unique()
    return sum(diversity(judge, samples[labels == k]) for k in classes) / len(classes)


@dataclass(frozen=True)
class ManifoldScores:
    """Fidelity and diversity measured separately on judge features (see :func:`manifold_scores`).

    precision: share of samples inside the real data's k-NN manifold (fidelity); recall: share of real points
    inside the samples' manifold (diversity); density: how many real neighbourhoods contain a sample on average,
    divided by k (about 1 for samples like the data, above 1 when they crowd the dense regions); coverage: share of
    real points whose neighbourhood contains a sample (diversity, robust to sample outliers).
    """

    precision: float
    recall: float
    density: float
    coverage: float
    k: int

    def __format__(self, spec: str) -> str:
        return (f"P {self.precision:{spec or '.3f'}} R {self.recall:{spec or '.3f'}} "
                f"D {self.density:{spec or '.3f'}} C {self.coverage:{spec or '.3f'}}")


def _knn_radii(f: Tensor, k: int) -> Tensor:
    """Distance from each row to its k-th nearest other row."""
    d = torch.cdist(f, f)
    return d.kthvalue(k + 1, dim=1).values  # the 1st smallest is the row itself (0)


def manifold_scores(real: Tensor, fake: Tensor, *, k: int = 5) -> ManifoldScores:
    """Precision and recall (Kynkaanniemi et al. 2019) and density and coverage (Naeem et al. 2020) of feature sets.

    Each set's manifold is the union of balls around its points reaching their k-th nearest neighbour in the same
    set. ``real`` and ``fake`` are (N, D) and (M, D) features (e.g. :func:`judge_features`); use equal N and M,
    as the estimates depend on set size. Precision and recall are 1 for identical sets; a collapsed set keeps
    precision and loses recall and coverage; a shifted set loses all four.
    """
    real, fake = torch.as_tensor(real, dtype=torch.float64), torch.as_tensor(fake, dtype=torch.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"need two (N, D) feature sets with the same D, got {tuple(real.shape)} and "
                         f"{tuple(fake.shape)}.")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < min(len(real), len(fake)):
        raise ValueError(f"k must be an integer from 1 to {min(len(real), len(fake)) - 1} (set sizes "
                         f"{len(real)} and {len(fake)}), got {k!r}.")
    r_real, r_fake = _knn_radii(real, k), _knn_radii(fake, k)
    d = torch.cdist(fake, real)  # (M, N)
    inside_real = d <= r_real[None, :]  # sample j inside real point i's ball
    inside_fake = d <= r_fake[:, None]  # real point i inside sample j's ball
    return ManifoldScores(precision=float(inside_real.any(1).double().mean()),
                          recall=float(inside_fake.any(0).double().mean()),
                          density=float(inside_real.double().sum(1).mean() / k),
                          coverage=float(inside_real.any(0).double().mean()), k=k)


def judge_manifold_scores(judge: nn.Module, samples: Tensor, reference: Tensor, *, k: int = 5) -> ManifoldScores:
    """:func:`manifold_scores` of samples against real reference images in judge feature space: fidelity and
    diversity as separate axes (reported by ``bench sampling`` and ``bench frontier``)."""
    return manifold_scores(judge_features(judge, reference), judge_features(judge, samples), k=k)


def layout_iou(samples: Tensor, layouts: Tensor, *, cells: int = 7, threshold: float = 0.25) -> Tensor:
    """Per-sample IoU of the cells with ink fraction > threshold in the samples and in the layouts asked for (lesson 10).

    ``layouts`` are hints from :func:`lessonlib.transforms.coarse_layout` (ink fraction in [0, 1]); two
    empty layouts count as a perfect match. Returns (N,) values in [0, 1]; take ``.mean()`` for the metric.
    """
    if samples.shape[0] != layouts.shape[0] or samples.shape[-2:] != layouts.shape[-2:]:
        raise ValueError(f"samples {tuple(samples.shape)} and layouts {tuple(layouts.shape)} must match in batch and size.")
    if not 0 < threshold < 1:
        raise ValueError(f"threshold is an ink fraction in (0, 1), got {threshold}.")
    got = F.adaptive_avg_pool2d(coarse_layout(samples, cells=cells), cells) > threshold
    want = F.adaptive_avg_pool2d(layouts.mean(1, keepdim=True), cells) > threshold
    inter, union = (got & want).flatten(1).sum(1), (got | want).flatten(1).sum(1)
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter, dtype=torch.float))


CLASSIFIER_EVAL_T = (0, 50, 100, 200, 300, 400, 500, 600, 700, 800, 999)


def accuracy_by_t(classifier: nn.Module, images: Tensor, labels: Tensor, schedule: NoiseSchedule,
                  timesteps=CLASSIFIER_EVAL_T, *, seed: int = 0) -> dict[int, float]:
    """Accuracy of ``classifier(x_t, t)`` on q_sample(images, t) at each timestep (lesson 03)."""
    gen, out = torch.Generator().manual_seed(seed), {}
    with torch.no_grad():
        for t in timesteps:
            tt = torch.full((len(images),), int(t))
            x_t = q_sample(schedule, images, tt, generator=gen)
            pred = torch.cat([classifier(x_t[i:i + 500], tt[i:i + 500]).argmax(1) for i in range(0, len(x_t), 500)])
            out[int(t)] = float((pred.cpu() == labels).float().mean())
    return out


def text_adherence(samples: Tensor, digits: Tensor, asked: list, judge: nn.Module, bins: AttributeBins) -> dict:
    """Digit adherence (judge) over all samples; thickness and slant adherence over the samples that asked for one.

    ``asked`` holds, per sample, None or an (attribute, word) pair, as :func:`lessonlib.captions.text_eval_prompts`
    makes them (lesson 08).
    """
    out = {"digit": judge_accuracy(judge, samples, digits)}
    for attribute in ("thickness", "slant"):
        idx = [i for i, a in enumerate(asked) if a and a[0] == attribute]
        if not idx:
            raise ValueError(f"no sample asked for a {attribute} word; text_eval_prompts(n) asks for every attribute "
                             "once n >= 50.")
        got = bins.word_index(attribute, measure(samples[idx])[attribute])
        want = torch.tensor([ATTRIBUTE_WORDS[attribute].index(asked[i][1]) for i in idx])
        out[attribute] = float((got == want).float().mean())
    return out


def reference_agreement(samples: Tensor, references: Tensor, labels, judge: nn.Module, bins: AttributeBins, *,
                        cells: int = 7) -> dict[str, Tensor]:
    """Per sample (N,) values: what sample i shares with reference digit i (lesson 08).

    ``class``: the judge's class equals ``labels[i]`` (1/0); ``thickness`` and ``slant``: the sample measures in
    the reference's tertile (1/0, chance 1/3); ``layout``: IoU of their inked cells in a ``cells`` x ``cells``
    layout; ``ink``: IoU of their inked pixels (x > 0), exact shape. Average with :func:`mean_interval`.
    """
    if samples.shape != references.shape or samples.ndim != 4 or samples.shape[1] != 1:
        raise ValueError(f"samples and references must be grey images of one shape (N, 1, H, W), got "
                         f"{tuple(samples.shape)} and {tuple(references.shape)}.")
    labels = torch.as_tensor(labels).reshape(-1).cpu()
    if len(labels) != len(samples):
        raise ValueError(f"give one label per reference: {len(labels)} labels for {len(samples)} references.")
    pred = judge_predictions(judge, samples)
    got, want = measure(samples), measure(references)
    out = {"class": (pred == labels).float()}
    for attribute in ("thickness", "slant"):
        out[attribute] = (bins.word_index(attribute, got[attribute]) == bins.word_index(attribute, want[attribute])).float()
    out["layout"] = layout_iou(samples, coarse_layout(references, cells=cells), cells=cells).float()
    a, b = samples.detach().cpu()[:, 0] > 0, references.detach().cpu()[:, 0] > 0
    inter, union = (a & b).flatten(1).sum(1), (a | b).flatten(1).sum(1)
    out["ink"] = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter, dtype=torch.float))
    return out


def colour_look(images: Tensor) -> dict[str, float]:
    """Chroma, clipped share and contrast of RGB images in [-1, 1] (lessons 07, 11): what oversaturation moves.

    Chroma is the mean over pixels of max - min over the three channels; the clipped share the share of channel
    values within 0.005 of 0 or 1 (on the [0, 1] scale); contrast the mean per-image std of the luminance
    0.299 R + 0.587 G + 0.114 B.
    """
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a (N, 3, H, W) RGB tensor in [-1, 1], got {getattr(images, 'shape', images)!r}.")
    u = (images.detach().float().cpu() + 1) / 2
    luminance = 0.299 * u[:, 0] + 0.587 * u[:, 1] + 0.114 * u[:, 2]
    return {"chroma": float((u.max(1).values - u.min(1).values).mean()),
            "clipped": float(((u <= 0.005) | (u >= 0.995)).float().mean()),
            "contrast": float(luminance.flatten(1).std(1).mean())}


def mean_ink(images: Tensor) -> float:
    """Mean ink per pixel, (x + 1) / 2 averaged over images in [-1, 1]: over-guided digits get heavy strokes
    and raise it above real digits' value (lessons 04, 09)."""
    if not torch.is_tensor(images) or images.ndim != 4:
        raise ValueError(f"images must be a (N, C, H, W) tensor in [-1, 1], got {getattr(images, 'shape', images)!r}.")
    return float(((images.detach().float().cpu() + 1) / 2).mean())
