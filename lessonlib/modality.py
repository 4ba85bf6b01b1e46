"""Image and text embeddings in one CLIP space: the modality gap, and two ways to cross it (lesson 08).

CLIP trains matched image and caption embeddings to have the largest cosine in a batch, not to coincide:
the two modalities occupy different regions of the unit sphere (Liang et al. 2022, "Mind the Gap"). A
decoder trained on *text* embeddings then sees an *image* embedding as an input from elsewhere, which is
why unCLIP (Ramesh et al. 2022) learns a prior that maps one to the other. This module measures the gap and
closes it the two simplest honest ways: re-centring by the measured offset, and a linear least-squares prior
fitted on training pairs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ModalityGap", "modality_gap", "recentre", "LinearPrior", "fit_linear_prior"]


def _check_pair(image_emb: Tensor, text_emb: Tensor, *, paired: bool) -> None:
    for name, e in (("image_emb", image_emb), ("text_emb", text_emb)):
        if not torch.is_tensor(e) or e.ndim != 2 or not e.is_floating_point() or len(e) < 2:
            shape = tuple(e.shape) if torch.is_tensor(e) else type(e).__name__
            raise ValueError(f"{name} must be a float tensor (N, D) with N >= 2 embeddings, got {shape}.")
    if image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"the embeddings must share one space: image width {image_emb.shape[1]}, "
                         f"text width {text_emb.shape[1]}. Use the image and text towers of the same CLIP.")
    if paired and len(image_emb) != len(text_emb):
        raise ValueError(f"paired embeddings need one caption per image: {len(image_emb)} images, {len(text_emb)} texts.")


@dataclass(frozen=True)
class ModalityGap:
    """What separates two clouds of embeddings: their mean offset and the cosines within and across them."""

    offset: Tensor  # mean(image) - mean(text), (D,)
    distance: float  # |offset|
    matched_cos: float  # mean cosine of each image with its own caption
    image_image_cos: float  # mean cosine of two different images of the same label
    text_text_cos: float  # ... two different captions of the same label
    image_text_cos: float  # ... an image and a caption of the same label (matched pairs included)

    def rows(self) -> list[tuple[str, float]]:
        return [("matched image-caption cosine", self.matched_cos),
                ("image-image cosine, same digit", self.image_image_cos),
                ("text-text cosine, same digit", self.text_text_cos),
                ("image-text cosine, same digit", self.image_text_cos),
                ("distance between the modality means", self.distance)]


def _mean_cos(a: Tensor, b: Tensor, same: Tensor, exclude_diagonal: bool) -> float:
    cos = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
    mask = same & ~torch.eye(len(a), dtype=torch.bool) if exclude_diagonal else same
    return float(cos[mask].mean()) if mask.any() else math.nan


def modality_gap(image_emb: Tensor, text_emb: Tensor, labels: Tensor | None = None) -> ModalityGap:
    """The gap between N images' embeddings and their N captions' embeddings (row i describes image i).

    The offset and distance are computed on the vectors as given (CLIP's are unit length); cosines on the
    normalised rows. ``labels`` (N,) group the pairs (the digit) for the within- and cross-modality cosines;
    without them every row is its own group.
    """
    _check_pair(image_emb, text_emb, paired=True)
    labels = torch.arange(len(image_emb)) if labels is None else torch.as_tensor(labels).reshape(-1).cpu()
    if len(labels) != len(image_emb):
        raise ValueError(f"give one label per pair: {len(labels)} labels for {len(image_emb)} pairs.")
    a, b = image_emb.detach().double().cpu(), text_emb.detach().double().cpu()
    same = labels[:, None] == labels[None, :]
    offset = a.mean(0) - b.mean(0)
    return ModalityGap(offset=offset.float(), distance=float(offset.norm()),
                       matched_cos=float((F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1).mean()),
                       image_image_cos=_mean_cos(a, a, same, True), text_text_cos=_mean_cos(b, b, same, True),
                       image_text_cos=_mean_cos(a, b, same, False))


def recentre(image_emb: Tensor, gap: ModalityGap) -> Tensor:
    """Move image embeddings by the measured offset into the text cloud, back onto the unit sphere."""
    if image_emb.ndim != 2 or image_emb.shape[1] != gap.offset.shape[0]:
        raise ValueError(f"image embeddings must be (N, {gap.offset.shape[0]}), got {tuple(image_emb.shape)}.")
    return F.normalize(image_emb - gap.offset.to(image_emb), dim=-1)


@dataclass(frozen=True)
class LinearPrior:
    """text_emb ~ image_emb @ weight + bias, fitted by ridge least squares on training pairs; unit rows out."""

    weight: Tensor  # (D, D)
    bias: Tensor  # (D,)
    train_cos: float  # mean cosine of the prediction with the true caption embedding, on the fitting pairs

    def __call__(self, image_emb: Tensor) -> Tensor:
        if image_emb.ndim != 2 or image_emb.shape[1] != self.weight.shape[0]:
            raise ValueError(f"image embeddings must be (N, {self.weight.shape[0]}), got {tuple(image_emb.shape)}.")
        return F.normalize(image_emb @ self.weight.to(image_emb) + self.bias.to(image_emb), dim=-1)


def fit_linear_prior(image_emb: Tensor, text_emb: Tensor, *, ridge: float = 1e-3) -> LinearPrior:
    """The smallest unCLIP-style prior: a linear map from image to caption embeddings (closed form, milliseconds)."""
    _check_pair(image_emb, text_emb, paired=True)
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}.")
    x = torch.cat([image_emb.detach().double().cpu(), torch.ones(len(image_emb), 1, dtype=torch.float64)], 1)
    y = text_emb.detach().double().cpu()
    reg = ridge * len(x) * torch.eye(x.shape[1], dtype=torch.float64)
    reg[-1, -1] = 0  # no penalty on the bias
    sol = torch.linalg.solve(x.T @ x + reg, x.T @ y)
    prior = LinearPrior(weight=sol[:-1].float(), bias=sol[-1].float(), train_cos=0.0)
    cos = float((prior(image_emb.detach().float().cpu()) * F.normalize(y.float(), dim=-1)).sum(-1).mean())
    return LinearPrior(prior.weight, prior.bias, cos)
