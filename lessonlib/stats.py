"""Uncertainty of small-sample measurements: every lesson's "is this difference real?" (lessons 05, 08, 09).

Floor 0 of the package: plain tensors in, numbers out. ``metrics`` re-exports both functions.
"""
from __future__ import annotations

import math

import torch

__all__ = ["mean_interval", "auc_interval"]


def mean_interval(values, z: float = 1.96) -> tuple[float, float]:
    """Mean of per-sample values and the half-width of its normal-approximation 95% interval, z std / sqrt(n)."""
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if len(v) < 2:
        raise ValueError(f"need at least 2 values for an interval, got {len(v)}.")
    return float(v.mean()), float(z * v.std() / math.sqrt(len(v)))


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
