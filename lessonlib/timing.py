"""Timing helpers for benchmarks and for the lessons' cost tables (lessons 07, 10; ``python -m lessonlib.bench``).

Timings are context, never a test: a busy two-core machine makes wall time noisy, so lessons report
ratios measured in the same run, and tests never assert on seconds.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

__all__ = ["per_call_seconds", "per_call_ms"]


def per_call_seconds(fn: Callable[[], object], *, min_seconds: float = 1.0, min_calls: int = 3) -> float:
    """Seconds per call of fn(): one warm-up call, then repeat until ``min_seconds`` and ``min_calls`` are reached."""
    if min_calls < 1 or min_seconds < 0:
        raise ValueError(f"min_calls must be >= 1 and min_seconds >= 0, got {min_calls} and {min_seconds}.")
    fn()
    _synchronize()
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < min_seconds:
        fn()
        _synchronize()
        calls += 1
    return (time.perf_counter() - start) / calls


def _synchronize() -> None:
    """Wait for queued GPU work, so that a call's time includes its kernels (a no-op without CUDA in use)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def per_call_ms(fn: Callable[[], object], *, per: int = 1, min_seconds: float = 1.0, min_calls: int = 3) -> float:
    """Milliseconds per call of fn(), divided by ``per`` (e.g. the batch size, for ms per image)."""
    if per < 1:
        raise ValueError(f"per must be a positive count (e.g. the batch size), got {per}.")
    return 1000 * per_call_seconds(fn, min_seconds=min_seconds, min_calls=min_calls) / per
