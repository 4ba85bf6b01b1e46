"""A labelled 2-D Gaussian mixture whose noisy marginals are exact under any schedule (lesson 01).

Component k (class k) is N(mu_k, Sigma_k) with weight w_k. Under q(x_t | x_0) it stays Gaussian,

    p_t(x | k) = N(x; sqrt(a) mu_k, a Sigma_k + (1 - a) I),      a = abar_t,

so p_t(x), its score grad log p_t(x), the class posterior p_t(k | x) and the classifier gradient
grad log p_t(k | x) = grad log p_t(x | k) - grad log p_t(x) are all closed-form. The exact
eps-function is eps*(x_t, t) = -sqrt(1 - a) grad log p_t(x_t): the minimiser of the denoising loss.

This module is the exact toy only, on the package's first floors (schedules, diffusion): the small networks
that learn it are in :mod:`lessonlib.nets.toy`, their training loops in :mod:`lessonlib.training`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .diffusion import q_sample
from .schedules import NoiseSchedule
from .types import EpsFn, GradFn

__all__ = ["GaussianMixture2D", "eps_error_by_t"]


def _marginal_score(log_joint: Tensor, scores: Tensor) -> Tensor:
    """grad log p_t(x) = sum_k p_t(k | x) grad log p_t(x | k)."""
    return (torch.softmax(log_joint, 1).unsqueeze(-1) * scores).sum(1)


@dataclass(eq=False)
class GaussianMixture2D:
    """Exact labelled mixture in 2-D; the default has three overlapping, anisotropic classes.

    By default component k is class k. Give ``labels`` (one class per component) for classes made of several
    components, as in :meth:`tree` (lesson 11); then classes, class posteriors and class scores sum over the
    components of a class.
    """

    means: Tensor = field(default_factory=lambda: torch.tensor([[-1.6, -0.9], [1.6, -0.9], [0.0, 1.4]]))
    covs: Tensor = field(default_factory=lambda: torch.tensor(
        [[[0.55, 0.25], [0.25, 0.35]], [[0.30, -0.18], [-0.18, 0.45]], [[0.70, 0.0], [0.0, 0.18]]]))
    weights: Tensor = field(default_factory=lambda: torch.tensor([0.45, 0.35, 0.20]))
    labels: Tensor | None = None
    levels: Tensor | None = None  # tree(): each component's depth in its tree (0: the trunk)

    def __post_init__(self):
        self.means = torch.as_tensor(self.means, dtype=torch.float64)
        self.covs = torch.as_tensor(self.covs, dtype=torch.float64)
        self.weights = torch.as_tensor(self.weights, dtype=torch.float64)
        K = self.means.shape[0]
        if self.means.shape != (K, 2) or self.covs.shape != (K, 2, 2) or self.weights.shape != (K,):
            raise ValueError("means must be (K, 2), covs (K, 2, 2) and weights (K,).")
        if not torch.allclose(self.covs, self.covs.transpose(1, 2)) or torch.any(torch.linalg.eigvalsh(self.covs) <= 0):
            raise ValueError("each covariance must be symmetric positive definite.")
        if torch.any(self.weights <= 0):
            raise ValueError("mixture weights must be positive.")
        self.weights = self.weights / self.weights.sum()
        if self.labels is not None:
            labels = torch.as_tensor(self.labels)
            if labels.dtype.is_floating_point or labels.dtype == torch.bool:
                raise ValueError(f"labels must be integer classes, got dtype {labels.dtype}.")
            self.labels = labels.long().reshape(-1)
            if self.labels.shape != (K,) or int(self.labels.min()) != 0:
                raise ValueError(f"labels must give one class per component ({K}), numbered from 0.")
            if len(self.labels.unique()) != int(self.labels.max()) + 1:
                raise ValueError("labels must use every class from 0 to the largest one.")

    @property
    def num_classes(self) -> int:
        return self.means.shape[0] if self.labels is None else int(self.labels.max()) + 1

    @classmethod
    def tree(cls, *, depth: int = 4, spread: float = 0.55, decay: float = 0.6, width: float = 0.05):
        """Two classes, each a branching tree of thin Gaussian segments (lesson 11's autoguidance toy).

        Each class grows a trunk from near the origin (class 0 up and to the left, class 1 up and to the right);
        every segment forks into two, ``spread`` radians apart, each ``decay`` times as long and as heavy as its
        parent, for ``depth`` levels. Outer branches are thin and rare: low density, but part of the data.
        """
        if isinstance(depth, bool) or not (isinstance(depth, int) and 1 <= depth <= 6):
            raise ValueError(f"depth must be an integer from 1 to 6, got {depth!r}.")
        for name, value, hi in (("spread", spread, math.pi), ("decay", decay, 1.0), ("width", width, 1.0)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 < value <= hi):
                raise ValueError(f"{name} must lie in (0, {hi:g}], got {value!r}.")
        means, covs, weights, labels, level = [], [], [], [], []
        for c, angle in enumerate((math.pi / 2 + 0.45, math.pi / 2 - 0.45)):
            stack = [((0.0, -1.6), angle, 1.3, 1.0, 0)]
            while stack:
                (x, y), a, length, w, d = stack.pop()
                dx, dy = math.cos(a), math.sin(a)
                end = (x + length * dx, y + length * dy)
                rot = torch.tensor([[dx, -dy], [dy, dx]], dtype=torch.float64)
                var = torch.diag(torch.tensor([(length / 3.5) ** 2, (width * (0.8 ** d)) ** 2], dtype=torch.float64))
                means.append([(x + end[0]) / 2, (y + end[1]) / 2])
                covs.append(rot @ var @ rot.T)
                weights.append(w)
                labels.append(c)
                level.append(d)
                if d + 1 < depth:
                    for side in (-1, 1):
                        stack.append((end, a + side * spread / 2, length * decay, w * decay, d + 1))
        return cls(torch.tensor(means), torch.stack(covs), torch.tensor(weights), torch.tensor(labels),
                   torch.tensor(level))

    def _by_class(self, log_joint: Tensor) -> Tensor:
        """log p(x, class) from log p(x, component): (B, K) -> (B, C)."""
        if self.labels is None:
            return log_joint
        return torch.stack([torch.logsumexp(log_joint[:, self.labels == c], 1) for c in range(self.num_classes)], 1)

    def _class_scores(self, log_joint: Tensor, scores: Tensor, y: Tensor) -> Tensor:
        """grad log p_t(x | y) per row, for classes y (B,)."""
        if self.labels is None:
            return scores[torch.arange(len(y)), y]
        masked = log_joint.masked_fill(self.labels[None, :] != y[:, None], -math.inf)
        return _marginal_score(masked, scores)

    # ---- exact densities at a noise level abar (a tensor (B,) or a number; abar = 1 is clean) ----
    def _noisy_components(self, abar: Tensor):
        a = abar.reshape(-1, 1, 1)  # (B, 1, 1)
        mean = a.sqrt() * self.means  # (B, K, 2)
        cov = a.unsqueeze(-1) * self.covs + (1 - a.unsqueeze(-1)) * torch.eye(2, dtype=torch.float64)
        return mean, cov

    def _prep(self, x: Tensor, abar) -> tuple[Tensor, Tensor]:
        if x.ndim != 2 or x.shape[1] != 2:
            raise ValueError(f"toy points must have shape (B, 2), got {tuple(x.shape)}.")
        abar = torch.as_tensor(abar, dtype=torch.float64).reshape(-1)
        return x.to(torch.float64), abar.to(x.device).expand(x.shape[0])

    def _terms(self, x: Tensor, abar) -> tuple[Tensor, Tensor]:
        """(log w_k + log p_t(x | k), grad log p_t(x | k)): shapes (B, K) and (B, K, 2), float64."""
        x, abar = self._prep(x, abar)
        shared = bool(torch.all(abar == abar[0]))  # one noise level for the batch: invert once
        mean, cov = self._noisy_components(abar[:1] if shared else abar)
        diff = x.unsqueeze(1) - mean
        scores = -(torch.linalg.inv(cov) @ diff.unsqueeze(-1)).squeeze(-1)
        maha = -(diff * scores).sum(-1)
        return self.weights.log() - 0.5 * (maha + torch.logdet(cov) + 2 * math.log(2 * math.pi)), scores

    def log_joint(self, x: Tensor, abar) -> Tensor:
        """log w_k + log p_t(x | k), shape (B, K)."""
        return self._terms(x, abar)[0]

    def log_prob(self, x: Tensor, abar, y=None) -> Tensor:
        """log p_t(x), or log p_t(x | y) when classes y are given; shape (B,)."""
        log_joint = self.log_joint(x, abar)
        if y is None:
            return torch.logsumexp(log_joint, dim=1)
        y = self._classes(y, x.shape[0]).to(log_joint.device)
        class_log_weight = self._by_class(self.weights.log()[None])[0]
        return self._by_class(log_joint)[torch.arange(len(y)), y] - class_log_weight[y]

    def component_of(self, x: Tensor, abar, y) -> Tensor:
        """The most probable component of each point among those of its class y (lesson 11's branch counts)."""
        y = self._classes(y, x.shape[0])
        log_joint = self.log_joint(x, abar)
        if self.labels is None:
            return y.clone()
        return log_joint.masked_fill(self.labels[None, :] != y[:, None], -math.inf).argmax(1)

    def posterior(self, x: Tensor, abar) -> Tensor:
        """p_t(class | x), shape (B, C): the exact noise-aware classifier."""
        return torch.softmax(self._by_class(self.log_joint(x, abar)), dim=1)

    def score(self, x: Tensor, abar, y=None) -> Tensor:
        """grad log p_t(x), or grad log p_t(x | y) when a class y is given; shape (B, 2), x's dtype."""
        log_joint, scores = self._terms(x, abar)
        if y is None:
            out = _marginal_score(log_joint, scores)
        else:
            out = self._class_scores(log_joint, scores, self._classes(y, x.shape[0]))
        return out.to(x)

    def posterior_mean_x0(self, x: Tensor, abar) -> Tensor:
        """E[x_0 | x_t] by Gaussian conditioning per component, sum_k p_t(k|x) (mu_k + sqrt(a) Sigma_k C_k^{-1}(x - m_k)).

        Computed without the score, so it checks Tweedie's formula independently.
        """
        x64, abar64 = self._prep(x, abar)
        mean, cov = self._noisy_components(abar64)
        gain = abar64.sqrt().reshape(-1, 1, 1, 1) * self.covs @ torch.linalg.inv(cov)  # (B, K, 2, 2)
        per_k = self.means + (gain @ (x64.unsqueeze(1) - mean).unsqueeze(-1)).squeeze(-1)
        return (torch.softmax(self.log_joint(x, abar), 1).unsqueeze(-1) * per_k).sum(1).to(x)

    def classifier_grad(self, x: Tensor, abar, y) -> Tensor:
        """grad log p_t(y | x) = grad log p_t(x | y) - grad log p_t(x) (Bayes), shape (B, 2)."""
        log_joint, scores = self._terms(x, abar)
        chosen = self._class_scores(log_joint, scores, self._classes(y, x.shape[0]))
        return (chosen - _marginal_score(log_joint, scores)).to(x)

    def _classes(self, y, batch: int) -> Tensor:
        y = torch.as_tensor(y).reshape(-1).long().cpu().expand(batch)
        if torch.any((y < 0) | (y >= self.num_classes)):
            raise ValueError(f"classes of this mixture are 0..{self.num_classes - 1}, got {y.unique().tolist()}.")
        return y

    # ---- the exact velocity of the linear (flow-matching) path, lesson 12 ----
    @staticmethod
    def linear_to_vp(t: Tensor) -> tuple[Tensor, Tensor]:
        """For linear-path times t: (abar of the same noise-to-signal ratio, r) with x_vp = x_lin / r."""
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        r = ((1 - t) ** 2 + t ** 2).sqrt()
        return ((1 - t) / r) ** 2, r

    def velocity_fn(self):
        """Exact v*(x_t, t) = E[eps - x0 | x_t] = (x_t - E[x0 | x_t]) / t on x_t = (1 - t) x0 + t eps, t in (0, 1].

        E[x0 | x_t] comes from Gaussian conditioning (:meth:`posterior_mean_x0`) at the DDPM noise level with the
        same signal-to-noise ratio, so no score or autograd is involved.
        """
        def velocity(x: Tensor, t: Tensor) -> Tensor:
            t64 = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(x.shape[0])
            if torch.any((t64 <= 0) | (t64 > 1)):
                raise ValueError("the exact toy velocity is defined for t in (0, 1].")
            abar, r = self.linear_to_vp(t64)
            x0 = self.posterior_mean_x0((x.to(torch.float64) / r[:, None]), abar).to(torch.float64)
            return ((x.to(torch.float64) - x0) / t64[:, None]).to(x)
        return velocity

    # ---- schedule-bound eps-functions (the exact "models") ----
    def eps_fn(self, schedule: NoiseSchedule, y=None) -> EpsFn:
        """Exact eps*(x_t, t) = -sqrt(1 - abar_t) grad log p_t(x_t [| y])."""
        def eps(x: Tensor, t: Tensor) -> Tensor:
            a = schedule.at("abar", t, x)
            return -(1 - a).sqrt() * self.score(x, a, y)
        return eps

    def model(self, schedule: NoiseSchedule):
        """Exact conditional model ``(x_t, t, y) -> eps`` where class -1 is the null (unconditional) label."""
        def forward(x: Tensor, t: Tensor, y: Tensor) -> Tensor:
            a = schedule.at("abar", t, x)
            y = torch.as_tensor(y).reshape(-1).expand(x.shape[0]).cpu()
            null = y < 0
            score = self.score(x, a)
            if (~null).any():
                score[~null] = self.score(x[~null], a[~null], y[~null])
            return -(1 - a).sqrt() * score
        return forward

    def classifier_grad_fn(self, schedule: NoiseSchedule, y) -> GradFn:
        """The exact grad_x log p_t(y | x_t) as a GradFn for :func:`lessonlib.guidance.grad_guidance`."""
        return lambda x, t: self.classifier_grad(x, schedule.at("abar", t, x), y)

    # ---- samples ----
    def sample(self, n: int, *, generator=None, y=None) -> tuple[Tensor, Tensor]:
        """n clean points and their classes (float32, long); all of class y if given."""
        if y is None:
            comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        elif self.labels is None:
            comp = self._classes(y, n).clone()
        else:  # a component of the wanted class, in proportion to the weights within it
            wanted = self._classes(y, n)
            comp = torch.empty(n, dtype=torch.long)
            for c in wanted.unique():
                rows = (wanted == c).nonzero().squeeze(1)
                w = self.weights * (self.labels == c)
                comp[rows] = torch.multinomial(w, len(rows), replacement=True, generator=generator)
        classes = comp if self.labels is None else self.labels[comp]
        chol = torch.linalg.cholesky(self.covs)[comp]
        z = torch.randn(n, 2, 1, generator=generator, dtype=torch.float64)
        return (self.means[comp] + (chol @ z).squeeze(-1)).float(), classes

    def tilted_sample(self, n: int, y: int, scale: float, *, generator=None, grid: int = 400) -> Tensor:
        """n points from the tilted clean density p(x) p(y | x)^scale, normalised on a fine grid."""
        lo = (self.means - 5 * self.covs.diagonal(dim1=1, dim2=2).sqrt()).min(0).values
        hi = (self.means + 5 * self.covs.diagonal(dim1=1, dim2=2).sqrt()).max(0).values
        axes = [torch.linspace(float(lo[i]), float(hi[i]), grid, dtype=torch.float64) for i in range(2)]
        pts = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
        log_joint = self._by_class(self.log_joint(pts, 1.0))
        log_p = torch.logsumexp(log_joint, 1)
        logits = log_p + scale * (log_joint[:, y] - log_p)
        idx = torch.multinomial(torch.softmax(logits, 0), n, replacement=True, generator=generator)
        cell = (hi - lo) / (grid - 1)
        jitter = (torch.rand(n, 2, generator=generator, dtype=torch.float64) - 0.5) * cell
        return (pts[idx] + jitter).float()


@torch.no_grad()
def eps_error_by_t(eps_fn: EpsFn, mixture: GaussianMixture2D, schedule: NoiseSchedule, timesteps, *,
                   n: int = 2000, seed: int = 0) -> dict[str, Tensor]:
    """Per timestep: relative error E||eps_fn - eps*||^2 / E||eps*||^2 against the exact eps*, on x_t ~ p_t.

    Also returns the denoising loss E||eps_fn - eps||^2 and its floor E||eps* - eps||^2, whose gap is
    exactly the mean squared eps error (the reason DSM learns the score).
    """
    gen = torch.Generator().manual_seed(seed)
    exact = mixture.eps_fn(schedule)
    rel, dsm, floor = [], [], []
    for t in timesteps:
        x0, _ = mixture.sample(n, generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        tb = torch.full((n,), int(t), dtype=torch.long)
        x_t = q_sample(schedule, x0, tb, noise)
        e_hat, e_star = eps_fn(x_t, tb), exact(x_t, tb)
        rel.append((e_hat - e_star).pow(2).sum(1).mean() / e_star.pow(2).sum(1).mean())
        dsm.append((e_hat - noise).pow(2).sum(1).mean())
        floor.append((e_star - noise).pow(2).sum(1).mean())
    return {"t": torch.as_tensor(list(timesteps)), "relative_error": torch.stack(rel),
            "dsm_loss": torch.stack(dsm), "dsm_floor": torch.stack(floor)}
