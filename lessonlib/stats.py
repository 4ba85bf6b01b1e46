"""Uncertainty of small-sample measurements: every lesson's "is this difference real?" (lessons 05, 08, 09).

Floor 0 of the package: plain tensors in, numbers out. ``metrics`` re-exports the intervals;
:func:`matched_indices` draws the class-matched real reference sets that FID_judge compares against.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

__all__ = ["mean_interval", "proportion_interval", "auc_interval", "matched_indices", "PairedDifference",
           "format_interval",
           "paired_difference", "paired_proportion"]


def mean_interval(values, z: float = 1.96) -> tuple[float, float]:
    """Mean of per-sample values and the half-width of its normal-approximation 95% interval, z std / sqrt(n)."""
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if len(v) < 2:
        raise ValueError(f"need at least 2 values for an interval, got {len(v)}.")
    return float(v.mean()), float(z * v.std() / math.sqrt(len(v)))


def proportion_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float, float]:
    """A share hits / n and its Wilson 95% interval (lo, hi): right near 0 and 1, where the normal one is not.

    Lesson 11 counts outliers and branch tips this way; two shares differ when their intervals do not overlap.
    """
    if isinstance(hits, bool) or isinstance(n, bool) or int(hits) != hits or int(n) != n:
        raise ValueError(f"hits and n must be whole counts, got {hits!r} and {n!r}.")
    if not 0 <= hits <= n or n < 1:
        raise ValueError(f"need 0 <= hits <= n and n >= 1, got hits={hits}, n={n}.")
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return p, max(0.0, centre - half), min(1.0, centre + half)


def auc_interval(positive, negative, z: float = 1.96) -> tuple[float, float]:
    """ROC AUC, P(a positive scores above a negative; ties count half), and its 95% half-width (lesson 05).

    The half-width is z times the Hanley-McNeil (1982) standard error. 0.5 is chance, 1 a perfect ranking.
    """
    pos = torch.as_tensor(positive, dtype=torch.float64).reshape(-1)
    neg = torch.as_tensor(negative, dtype=torch.float64).reshape(-1)
    if len(pos) < 2 or len(neg) < 2:
        raise ValueError(f"need at least 2 positive and 2 negative scores, got {len(pos)} and {len(neg)}.")
    diff = pos[:, None] - neg[None, :]
    a = float((diff > 0).double().mean() + 0.5 * (diff == 0).double().mean())
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (len(pos) - 1) * (q1 - a * a) + (len(neg) - 1) * (q2 - a * a)) / (len(pos) * len(neg))
    return a, float(z * math.sqrt(max(var, 0.0)))


def matched_indices(pool_labels, wanted, *, copies: int = 1, seed: int = 0) -> torch.Tensor:
    """Indices into a labelled pool whose labels equal ``wanted`` position by position: (copies, N).

    Row c is a random draw without replacement, so ``pool_labels[out[c]] == wanted`` and the rows share no
    index: ``copies=2`` gives the two disjoint real sets of a class-matched real-vs-real floor (lessons
    04, 07, 09). Raises if the pool has too few examples of a class.
    """
    pool = torch.as_tensor(pool_labels).reshape(-1)
    want = torch.as_tensor(wanted).reshape(-1)
    if copies < 1:
        raise ValueError(f"copies must be at least 1, got {copies}.")
    if len(want) == 0:
        raise ValueError("wanted is empty: give one label per image you need.")
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(copies, len(want), dtype=torch.long)
    for k in want.unique():
        slots = (want == k).nonzero().squeeze(1)
        have = (pool == k).nonzero().squeeze(1)
        need = copies * len(slots)
        if need > len(have):
            raise ValueError(
                f"class {int(k)}: need {need} examples ({copies} x {len(slots)}), the pool has {len(have)}; "
                "ask for fewer images or a larger real set."
            )
        out[:, slots] = have[torch.randperm(len(have), generator=gen)[:need]].reshape(copies, len(slots))
    return out


@dataclass(frozen=True)
class PairedDifference:
    """A difference between two arms measured on the same samples (same noise, same labels), first minus second,
    with its 95% interval; ``n`` pairs. Call a difference only when the interval excludes 0."""

    diff: float
    lo: float
    hi: float
    n: int
    method: str

    @property
    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def verdict(self, first: str = "first", second: str = "second", *, lower_is_better: bool = False) -> str:
        """'FIRST higher' / 'SECOND higher' (or 'better' with ``lower_is_better``), or 'not separable at this N'."""
        if not self.excludes_zero:
            return f"not separable at N = {self.n}"
        if lower_is_better:
            return f"{first if self.diff < 0 else second} better"
        return f"{first if self.diff > 0 else second} higher"

    def __format__(self, spec: str) -> str:
        """``f"{d:>24.2f}"``: signed values in the number format, the width and alignment for the whole."""
        return format_interval(self.diff, self.lo, self.hi, spec, default=".3f", signed=True,
                               kind="a PairedDifference")


def format_interval(point: float, lo: float, hi: float, spec: str, *, default: str = ".3f", signed: bool = False,
                    kind: str = "an interval") -> str:
    """'point [lo, hi]' with a format spec such as '.2f' (each value) or '>24.2f' (and the width of the whole)."""
    match = re.fullmatch(r"(?P<layout>[<>^]?\d*)(?P<number>\.\d+[fg])?", spec)
    if match is None:
        raise ValueError(f"format {kind} with e.g. '.2f' or '>24.2f', not {spec!r}.")
    number = ("+" if signed else "") + (match["number"] or default)
    return format(f"{point:{number}} [{lo:{number}}, {hi:{number}}]", match["layout"])


def paired_difference(a, b, z: float = 1.96) -> PairedDifference:
    """Mean of a - b over paired values (sample i of both arms shares its noise and label) and the normal 95%
    interval of that mean: z sd(a - b) / sqrt(n). Pairing removes what the two arms share, so the interval is
    narrower than two unpaired intervals whenever the arms are correlated."""
    a = torch.as_tensor(a, dtype=torch.float64).reshape(-1)
    b = torch.as_tensor(b, dtype=torch.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same count, got {len(a)} and {len(b)}.")
    mean, half = mean_interval(a - b, z)
    return PairedDifference(mean, mean - half, mean + half, len(a), "paired mean")


def paired_proportion(a_hits, b_hits, z: float = 1.96) -> PairedDifference:
    """Difference of two hit rates measured on the same samples (adherence of arm a minus arm b), with the
    interval of the paired (McNemar) difference: only the discordant pairs carry information.

    With b01 the pairs a misses and b hits and b10 the reverse, the difference is (b10 - b01) / n with standard
    error sqrt(b10 + b01 - (b10 - b01)^2 / n) / n (Agresti, *Categorical Data Analysis*, 10.1).
    """
    a = torch.as_tensor(a_hits).reshape(-1)
    b = torch.as_tensor(b_hits).reshape(-1)
    if a.shape != b.shape or len(a) < 2:
        raise ValueError(f"paired hits need the same count (at least 2), got {len(a)} and {len(b)}.")
    if not (((a == 0) | (a == 1)).all() and ((b == 0) | (b == 1)).all()):
        raise ValueError("hits must be 0/1 (or booleans), one per sample.")
    a, b, n = a.bool(), b.bool(), len(a)
    b10, b01 = int((a & ~b).sum()), int((~a & b).sum())
    diff = (b10 - b01) / n
    half = z * math.sqrt(max(b10 + b01 - (b10 - b01) ** 2 / n, 0.0)) / n
    return PairedDifference(diff, diff - half, diff + half, n, "paired proportion (McNemar)")
