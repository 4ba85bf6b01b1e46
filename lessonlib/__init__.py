"""lessonlib: the tested building blocks behind the course on conditional diffusion.

Every model and every guidance method is an eps-function ``(x_t, t) -> eps_hat``
(see :mod:`lessonlib.guidance`); samplers (:mod:`lessonlib.samplers`) consume one.
"""
from __future__ import annotations

from .devices import device, setup

__version__ = "0.2.0.dev0"  # the one version source: pyproject.toml reads it; see CHANGELOG.md
__all__ = ["device", "setup", "__version__"]
