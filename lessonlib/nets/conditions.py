"""Conditions for the text-conditioned U-Net, built from a frozen CLIP (lesson 08).

A condition is a dict the U-Net reads (see :mod:`lessonlib.nets.unet`): per-token features ``tokens``
with their ``mask`` for cross-attention, the pooled text vector ``vec``, and a ``null`` flag per row that
swaps in the learned null text (the unconditional branch of classifier-free guidance).
"""
from __future__ import annotations

import torch

__all__ = ["text_condition", "null_condition"]


def text_condition(clip, texts) -> dict:
    """A text-conditioned U-Net's condition from the frozen CLIP: token features, their mask, the pooled vector
    and a ``null`` flag (all False; see :func:`null_condition`); ``clip`` is a SmallCLIP (lesson 08)."""
    with torch.no_grad():
        tokens, mask, pooled = clip.encode_tokens(texts)
    return {"tokens": tokens, "mask": mask, "vec": pooled, "null": torch.zeros(len(tokens), dtype=torch.bool)}


def null_condition(cond: dict) -> dict:
    """The same condition with every row switched to the learned null text (the unconditional branch)."""
    return {**cond, "null": torch.ones_like(cond["null"])}
