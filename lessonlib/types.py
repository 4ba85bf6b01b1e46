"""The course's abstractions, named once (DESIGN.md section 3; every lesson).

| name            | signature                          | what it is                                        |
| --------------- | ---------------------------------- | ------------------------------------------------- |
| ``EpsFn``       | ``(x_t, t) -> eps_hat``            | a model with its condition bound, or any guidance |
| ``CondModel``   | ``(x_t, t, cond) -> eps_hat``      | a conditional model before its condition is bound |
| ``GradFn``      | ``(x_t, t) -> grad_x log p(y|x_t)`` | what classifier and CLIP guidance add             |
| ``LossFn``      | ``(model, step) -> loss``          | one training step's loss, for :func:`fit`          |
| ``NULL_CLASS``  | ``-1``                             | the learned null class of CFG models (lesson 07)  |

Timesteps ``t`` are integer tensors of shape (B,); images are float tensors in [-1, 1], NCHW.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import Tensor, nn

__all__ = ["EpsFn", "CondModel", "GradFn", "LossFn", "NULL_CLASS"]

EpsFn = Callable[[Tensor, Tensor], Tensor]
CondModel = Callable[[Tensor, Tensor, Any], Tensor]
GradFn = Callable[[Tensor, Tensor], Tensor]
LossFn = Callable[[nn.Module, int], Tensor]

NULL_CLASS = -1  # the class label a CFG model reads as "no condition" (its learned null embedding)
