"""What attention costs: the lecture's formulas, and the same numbers measured (lessons 08, 10).

For N = H * W image positions with C channels, batch B, and (cross-attention) L text tokens of width D:

| layer           | attention matrix (floats)  | multiply-adds x 2 = FLOPs                               |
| --------------- | -------------------------- | ------------------------------------------------------- |
| self-attention  | B N^2                      | 2 B [N C 3C (qkv) + 2 N^2 C (scores, mix) + N C^2 (out)] |
| cross-attention | B N L                      | 2 B [N C^2 (q) + L D 2C (kv) + 2 N L C + N C^2 (out)]    |
| FiLM / AdaGN    | none                       | 2 B E 2C (the linear map from the embedding of width E)  |

Self-attention grows with N^2 (the resolution to the fourth power); cross-attention only with N L; FiLM not
with the resolution at all (its per-pixel scale and shift are element-wise, not multiply-adds of a matmul).
:func:`measured_softmax_bytes` reads the bytes the softmax actually allocates from torch's profiler, and
:func:`measured_flops` counts matmul and convolution FLOPs with torch's FlopCounterMode.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from .nets.unet import CrossAttention, SelfAttention

__all__ = ["AttentionCost", "attention_cost", "film_flops", "unet_attention_costs", "measured_softmax_bytes",
           "measured_flops"]


@dataclass
class AttentionCost:
    kind: str  # "self" or "cross"
    resolution: int  # H (= W)
    positions: int  # N = H * W
    keys: int  # N for self-attention, L for cross-attention
    channels: int
    flops: int
    matrix_bytes: int  # the B x N x keys attention probabilities


def attention_cost(kind: str, *, resolution: int, channels: int, batch: int = 1, tokens: int | None = None,
                   context_dim: int | None = None, bytes_per_float: int = 4) -> AttentionCost:
    """FLOPs and attention-matrix bytes of one single-head attention layer (formulas in the module docstring)."""
    if kind not in ("self", "cross"):
        raise ValueError(f"kind must be 'self' or 'cross', got {kind!r}.")
    if kind == "cross" and not (tokens and context_dim):
        raise ValueError("cross-attention needs tokens (L) and context_dim (D).")
    n, c = resolution * resolution, channels
    if kind == "self":
        keys, macs = n, n * c * 3 * c + 2 * n * n * c + n * c * c
    else:
        keys, macs = tokens, n * c * c + tokens * context_dim * 2 * c + 2 * n * tokens * c + n * c * c
    return AttentionCost(kind, resolution, n, keys, c, 2 * batch * macs, batch * n * keys * bytes_per_float)


def film_flops(*, emb_dim: int, channels: int, batch: int = 1) -> int:
    """FLOPs of a FiLM/AdaGN modulation's linear map, 2 B E 2C: independent of the resolution (lesson 10)."""
    return 2 * batch * emb_dim * 2 * channels


def unet_attention_costs(model: nn.Module, x: torch.Tensor, t: torch.Tensor, cond=None) -> list[tuple[nn.Module, AttentionCost]]:
    """Run ``model(x, t, cond)`` once and compute the cost of every attention layer at the shape it really saw."""
    seen: list[tuple[nn.Module, AttentionCost]] = []

    def hook(module, args, _out):
        h = args[0]
        if isinstance(module, CrossAttention):
            cost = attention_cost("cross", resolution=h.shape[-1], channels=h.shape[1], batch=h.shape[0],
                                  tokens=args[1].shape[1], context_dim=args[1].shape[2])
        else:
            cost = attention_cost("self", resolution=h.shape[-1], channels=h.shape[1], batch=h.shape[0])
        seen.append((module, cost))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (SelfAttention, CrossAttention))]
    try:
        with torch.no_grad():
            model(x, t, cond)
    finally:
        for handle in handles:
            handle.remove()
    return seen


@contextmanager
def _quiet_native_stderr():
    """Silence what C++ writes to file descriptor 2 (the profiler's start/stop log lines) for a moment."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def measured_softmax_bytes(fn) -> int:
    """Bytes allocated by softmax ops while ``fn()`` runs, as torch's profiler records them (CPU or GPU)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with _quiet_native_stderr(), torch.no_grad(), profile(activities=activities, profile_memory=True) as prof:
        fn()
    return int(sum(max(e.self_cpu_memory_usage, 0) + max(getattr(e, "self_device_memory_usage", 0), 0)
                   for e in prof.key_averages() if "softmax" in e.key))


def measured_flops(fn, *, grad: bool = False) -> int:
    """Matmul and convolution FLOPs of ``fn()`` as torch's FlopCounterMode counts them (lesson 10); ``grad=True``
    keeps autograd on, so a training step's backward pass is counted too (``bench train``)."""
    with torch.set_grad_enabled(grad), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())
