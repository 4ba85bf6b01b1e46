"""Measurements used across the course: sample distances now; judge-based metrics with lesson 02."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["energy_distance"]


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
