"""Conditions for the text-conditioned U-Net, built from a frozen CLIP (lesson 08).

A condition is a dict the U-Net reads (see :mod:`lessonlib.nets.unet`): per-token features ``tokens``
with their ``mask`` for cross-attention, the pooled text vector ``vec``, and a ``null`` flag per row that
swaps in the learned null text (the unconditional branch of classifier-free guidance).
"""
from __future__ import annotations

import torch

__all__ = ["text_condition", "vector_condition", "null_condition"]


def text_condition(clip, texts, *, tokens: bool = True) -> dict:
    """A text-conditioned U-Net's condition from the frozen CLIP: token features, their mask, the pooled vector
    and a ``null`` flag (all False; see :func:`null_condition`); ``clip`` is a SmallCLIP (lesson 08).

    ``tokens=False`` keeps the pooled vector alone, for a U-Net without cross-attention (``context_dim=None``).
    """
    with torch.no_grad():
        feats, mask, pooled = clip.encode_tokens(texts)
    null = torch.zeros(len(pooled), dtype=torch.bool)
    return {"tokens": feats, "mask": mask, "vec": pooled, "null": null} if tokens else {"vec": pooled, "null": null}


def vector_condition(vec) -> dict:
    """A condition that is one embedding per row, (B, cond_dim), for a U-Net without cross-attention: e.g. a
    CLIP *image* embedding given to a model trained on pooled CLIP *text* embeddings (lesson 08)."""
    if not torch.is_tensor(vec) or vec.ndim != 2 or not vec.is_floating_point():
        shape = tuple(vec.shape) if torch.is_tensor(vec) else type(vec).__name__
        raise ValueError(f"give one embedding per row, a float tensor (B, D), got {shape}.")
    return {"vec": vec, "null": torch.zeros(len(vec), dtype=torch.bool)}


def null_condition(cond: dict) -> dict:
    """The same condition with every row switched to the learned null text (the unconditional branch)."""
    return {**cond, "null": torch.ones_like(cond["null"])}
