"""Image transforms shared by training and measurement (lessons 02, 05, 10).

:func:`random_shift` is the augmentation of every classifier and CLIP recipe (plus :func:`random_hflip` for
recipes with ``hflip``, e.g. the CIFAR-10 judge: a mirrored digit is not a digit, a mirrored horse is a horse); :func:`coarse_layout`
is the ControlNet's hint (lesson 10) and what :func:`lessonlib.metrics.layout_iou` compares.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["random_shift", "random_hflip", "coarse_layout"]


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image by up to max_shift pixels, padding with the background -1 (lesson 02)."""
    padded = F.pad(x, [max_shift] * 4, value=-1.0)
    offsets = torch.randint(0, 2 * max_shift + 1, (len(x), 2), generator=generator)
    h, w = x.shape[-2:]
    return torch.stack([p[:, i:i + h, j:j + w] for p, (i, j) in zip(padded, offsets.tolist())])


def random_hflip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror each image left-right with probability 1/2 (the CIFAR-10 judge's augmentation)."""
    flip = torch.rand(len(x), generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)


def coarse_layout(images: Tensor, *, cells: int = 7) -> Tensor:
    """Ink fraction in each of cells x cells blocks, in [0, 1], upsampled back to the image size (lesson 10's hint)."""
    if images.ndim != 4 or images.shape[-1] % cells or images.shape[-2] % cells:
        raise ValueError(f"images must be (B, C, H, W) with H and W divisible by cells={cells}, got {tuple(images.shape)}.")
    ink = ((images.mean(1, keepdim=True) + 1) / 2).clamp(0, 1)
    coarse = F.adaptive_avg_pool2d(ink, cells)
    return F.interpolate(coarse, size=images.shape[-2:], mode="nearest")
