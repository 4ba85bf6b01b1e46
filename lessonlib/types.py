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

import torch
from torch import Tensor, nn

__all__ = ["EpsFn", "CondModel", "GradFn", "LossFn", "NULL_CLASS", "check_finite", "check_step"]

EpsFn = Callable[[Tensor, Tensor], Tensor]
CondModel = Callable[[Tensor, Tensor, Any], Tensor]
GradFn = Callable[[Tensor, Tensor], Tensor]
LossFn = Callable[[nn.Module, int], Tensor]

NULL_CLASS = -1  # the class label a CFG model reads as "no condition" (its learned null embedding)


def check_finite(value: Any, name: str) -> Any:
    """Return ``value``; a float tensor (or a dict or list of them) holding NaN or infinity raises a ValueError that
    names the argument and counts the bad values. Labels, strings and None pass as they are."""
    if isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, f"{name}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_finite(item, f"{name}[{i}]")
    elif torch.is_tensor(value) and value.is_floating_point():
        bad = int((~torch.isfinite(value)).sum())
        if bad:
            raise ValueError(f"{name} has {bad} non-finite value(s) (NaN or infinity) out of {value.numel()}; "
                             "check where it was computed (a division by zero, a log of 0, a diverged model).")
    return value


def check_step(out: Tensor, index: int, t, what: str) -> Tensor:
    """Return a sampler step's model output; NaN or infinity stops the sampler with a FloatingPointError that names
    the step and t, instead of finishing with a NaN image."""
    bad = int((~torch.isfinite(out)).sum())
    if bad:
        raise FloatingPointError(f"{what} returned {bad} non-finite value(s) (NaN or infinity) at step {index} "
                                 f"(t = {t}); the sample would be NaN. A guidance scale too large, a model that "
                                 "diverged in training, or an input outside its range are the usual causes.")
    return out
