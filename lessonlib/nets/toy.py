"""Small MLPs that learn the exact 2-D toy of :mod:`lessonlib.toy`: eps, class-conditional eps, velocity
(lessons 01, 11, 12). :mod:`lessonlib.training` fits them."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..flow import check_unit_time
from .embedding import timestep_embedding

__all__ = ["ToyEpsMLP", "ToyCondEpsMLP", "ToyVelocityMLP"]


class ToyEpsMLP(nn.Module):
    """A small MLP eps-model for 2-D points: [x, time embedding] -> eps (lesson 01)."""

    def __init__(self, hidden: int = 128, depth: int = 3, time_dim: int = 32):
        super().__init__()
        self.time_dim = time_dim
        self.net = _mlp(2 + time_dim, hidden, depth)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net(torch.cat([x, timestep_embedding(t, self.time_dim)], dim=1))


def _mlp(width: int, hidden: int, depth: int) -> nn.Sequential:
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, 2))


class ToyCondEpsMLP(nn.Module):
    """A class-conditional toy eps-model ``(x, t, y) -> eps``; class -1 is the null label for CFG (lesson 11)."""

    def __init__(self, num_classes: int, hidden: int = 128, depth: int = 3, time_dim: int = 32, class_dim: int = 16):
        super().__init__()
        self.num_classes, self.time_dim = num_classes, time_dim
        self.embed = nn.Embedding(num_classes + 1, class_dim)  # the last row is the null class
        self.net = _mlp(2 + time_dim + class_dim, hidden, depth)

    def forward(self, x: Tensor, t: Tensor, y) -> Tensor:
        y = torch.as_tensor(y, device=x.device).reshape(-1).long().expand(x.shape[0])
        if torch.any((y < -1) | (y >= self.num_classes)):
            raise ValueError(f"classes are 0..{self.num_classes - 1}, or -1 for the null class; got {y.unique().tolist()}.")
        emb = self.embed(torch.where(y < 0, torch.full_like(y, self.num_classes), y))
        return self.net(torch.cat([x, timestep_embedding(t, self.time_dim), emb], dim=1))


class ToyVelocityMLP(ToyEpsMLP):
    """The same MLP as a velocity model: float times t in [0, 1], embedded as 999 t like the velocity U-Net
    (lesson 12)."""

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = check_unit_time(t, x).reshape(-1).expand(x.shape[0])
        return super().forward(x, 999 * t)
