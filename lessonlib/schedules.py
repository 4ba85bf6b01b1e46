"""Noise schedules: betas, alphas and cumulative products, indexed by integer timestep.

Notation (lesson 01; Ho et al. 2020, Nichol & Dhariwal 2021):

| symbol        | code               | meaning                                           |
| ------------- | ------------------ | ------------------------------------------------- |
| T             | ``schedule.T``     | number of diffusion steps; timesteps t = 0..T-1   |
| beta_t        | ``betas[t]``       | variance added at step t                          |
| alpha_t       | ``alphas[t]``      | 1 - beta_t                                        |
| abar_t        | ``abar[t]``        | prod_{s<=t} alpha_s: signal kept in x_t           |
| abar_{t-1}    | ``abar_prev[t]``   | abar one step earlier (1 at t = 0)                |

x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps. Every quantity is looked up by the
timestep ``t`` itself, never by the position of a step inside a sampling loop.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["NoiseSchedule", "linear_schedule", "cosine_schedule", "make_schedule", "timestep_sequence"]


TABLES = ("betas", "alphas", "abar", "abar_prev")  # what NoiseSchedule.at can index


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """Betas of a discrete diffusion process and everything derived from them (lesson 01).

    Build one with :func:`linear_schedule`, :func:`cosine_schedule` or
    ``NoiseSchedule(betas)``; quantities are float64 tensors of shape (T,).
    """

    betas: Tensor
    name: str = "custom"

    def __post_init__(self):
        betas = torch.as_tensor(self.betas, dtype=torch.float64).detach().cpu()
        if betas.ndim != 1 or betas.numel() < 1:
            raise ValueError(
                f"betas must be a 1-D sequence with T >= 1 entries, got shape {tuple(betas.shape)}."
            )
        if not torch.all((betas > 0) & (betas < 1)):
            bad = betas[~((betas > 0) & (betas < 1))][:3].tolist()
            raise ValueError(f"every beta_t must lie strictly between 0 and 1; found {bad}.")
        object.__setattr__(self, "betas", betas)
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, dim=0)
        object.__setattr__(self, "alphas", alphas)
        object.__setattr__(self, "abar", abar)
        object.__setattr__(self, "abar_prev", torch.cat([abar.new_ones(1), abar[:-1]]))

    @property
    def T(self) -> int:
        """Number of diffusion steps."""
        return self.betas.numel()

    def __repr__(self) -> str:
        return f"NoiseSchedule(name={self.name!r}, T={self.T}, abar_T={self.abar[-1].item():.3g})"

    def check_timesteps(self, t, batch: int | None = None) -> Tensor:
        """Validate integer timesteps in 0..T-1 (shape (B,)) and return them as a long tensor."""
        t = torch.as_tensor(t)
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise ValueError(
                f"timesteps must be integers in 0..{self.T - 1} (dtype torch.long), got dtype {t.dtype}. "
                "Index schedules by the integer timestep, not by a continuous time."
            )
        if t.ndim == 0:
            t = t.reshape(1) if batch is None else t.expand(batch)
        if t.ndim != 1:
            raise ValueError(f"timesteps must have shape (B,), got shape {tuple(t.shape)}.")
        if batch is not None and t.numel() not in (1, batch):
            raise ValueError(f"got {t.numel()} timesteps for a batch of {batch} images; pass one per image.")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.T):
            raise ValueError(
                f"timesteps must lie in 0..{self.T - 1} for this schedule (T={self.T}); "
                f"got values from {int(t.min())} to {int(t.max())}."
            )
        return t.long()

    def at(self, name: str, t, like: Tensor) -> Tensor:
        """``schedule.<name>[t]`` shaped (B, 1, ..., 1) to broadcast against ``like``, in its dtype."""
        if name not in TABLES:
            raise ValueError(f"a schedule has no table {name!r}; choose one of {TABLES}.")
        table = getattr(self, name)
        t = self.check_timesteps(t, batch=like.shape[0])
        values = table[t.cpu()].to(device=like.device, dtype=like.dtype)
        if values.numel() == 1 and like.shape[0] != 1:
            values = values.expand(like.shape[0])
        return values.reshape(-1, *([1] * (like.ndim - 1)))


def _check_T(T) -> int:
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T (the number of diffusion steps) must be an integer >= 1, got {T!r}.")
    return T


def linear_schedule(T: int = 1000, *, beta_start: float = 1e-4, beta_end: float = 0.02,
                    max_beta: float = 0.999) -> NoiseSchedule:
    """Linear betas of DDPM (Ho et al. 2020), rescaled by 1000/T so any T spans the same noise (lesson 01).

    For very small T the rescaled betas are capped at ``max_beta``, as in the cosine schedule.
    """
    _check_T(T)
    scale = 1000.0 / T
    betas = torch.linspace(beta_start * scale, beta_end * scale, T, dtype=torch.float64).clamp(max=max_beta)
    return NoiseSchedule(betas, name="linear")


def cosine_schedule(T: int = 1000, *, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
    """Cosine schedule of Nichol & Dhariwal (2021): abar(t) = cos^2(((t/T + s)/(1 + s)) pi/2) (lesson 01)."""
    _check_T(T)
    if not 0 < max_beta < 1:
        raise ValueError(f"max_beta must lie in (0, 1), got {max_beta}.")
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    betas = [min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)]
    return NoiseSchedule(torch.tensor(betas, dtype=torch.float64), name="cosine")


def make_schedule(name: str = "linear", T: int = 1000) -> NoiseSchedule:
    """Schedule by name: ``"linear"`` or ``"cosine"``."""
    makers = {"linear": linear_schedule, "cosine": cosine_schedule}
    if name not in makers:
        raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(makers)}.")
    return makers[name](T)


def timestep_sequence(T: int, steps: int | None = None) -> Tensor:
    """Descending timesteps: ``steps`` values evenly spaced over 0..T-1, both ends included (lesson 02)."""
    steps = T if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an integer from 1 to T={T}, got {steps!r}.")
    if steps == 1:
        return torch.tensor([T - 1])
    return torch.linspace(0, T - 1, steps, dtype=torch.float64).round().long().flip(0)


def signal_noise(schedule: NoiseSchedule, k: int) -> tuple[float, float]:
    """(a, s) = (sqrt(abar_k), sqrt(1 - abar_k)) at one integer timestep; k = -1 is the clean image (1, 0)."""
    if k < 0:
        return 1.0, 0.0
    abar = float(schedule.abar[k])
    return abar ** 0.5, (1 - abar) ** 0.5
