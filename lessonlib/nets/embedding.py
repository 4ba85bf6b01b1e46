"""Sinusoidal timestep embedding (Vaswani et al. 2017; as in DDPM), shared by every network."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def timestep_embedding(t: Tensor, dim: int, *, max_period: float = 10_000.0) -> Tensor:
    """[cos(t f_i), sin(t f_i)] with f_i = max_period^(-i / (dim/2)), shape (B, dim) (lesson 01)."""
    if dim < 2 or dim % 2:
        raise ValueError(f"the embedding width must be an even number >= 2, got {dim}.")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float().reshape(-1, 1) * freqs
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class TimeMLP(torch.nn.Sequential):
    """Sinusoidal embedding of t (width ``dim``) followed by Linear-SiLU-Linear to ``emb_dim``.

    A ``Sequential`` so parameter names stay ``0.weight`` / ``2.weight`` (checkpoints rely on them).
    """

    def __init__(self, dim: int, emb_dim: int):
        super().__init__(torch.nn.Linear(dim, emb_dim), torch.nn.SiLU(), torch.nn.Linear(emb_dim, emb_dim))
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:  # noqa: D102
        return super().forward(timestep_embedding(t, self.dim))
