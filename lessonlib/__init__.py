"""lessonlib: the tested building blocks behind the course on conditional diffusion.

Every model and every guidance method is an eps-function ``(x_t, t) -> eps_hat``
(see :mod:`lessonlib.guidance`); samplers (:mod:`lessonlib.samplers`) consume one.
"""
from __future__ import annotations

import torch

__version__ = "0.2.0.dev0"  # the one version source: pyproject.toml reads it; see CHANGELOG.md
__all__ = ["device", "__version__"]


def device() -> torch.device:
    """The best available device: CUDA, then Apple MPS, then CPU (no hidden .cuda() anywhere else)."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
