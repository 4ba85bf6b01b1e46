"""Figures used across the lessons: image grids, 2-D scatter plots, density contours, PNG export."""
from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .stats import PairedDifference

__all__ = ["image_grid", "show_images", "scatter_classes", "density_contours", "to_png", "forest", "weight_map"]

CLASS_COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple",
                "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan"]


def image_grid(images: Tensor, *, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile (N, C, H, W) images in [-1, 1] into one (H', W', C) array in [0, 1]."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, 1 or 3, H, W), got {tuple(images.shape)}.")
    n, c, h, w = images.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / nrow))
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2).numpy()
    grid = np.ones((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), dtype=np.float32)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = x[i]
    return grid.transpose(1, 2, 0)


def show_images(images: Tensor, *, nrow: int | None = None, ax=None, title: str | None = None):
    """Show a grid of images in [-1, 1] on a matplotlib axis (grey for one channel)."""
    ax = ax or plt.gca()
    grid = image_grid(images, nrow=nrow)
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def scatter_classes(ax, x: Tensor, labels: Tensor | None = None, *, s: float = 3, alpha: float = 0.5,
                    legend: bool | str = False, **kwargs):
    """Scatter 2-D points coloured by class (one colour when labels is None).

    ``legend=True`` names the classes; a string also titles the legend (e.g. "most likely class" when the
    colours are a classifier's verdict rather than the true labels).
    """
    x = x.detach().cpu().numpy()
    colors = "black" if labels is None else [CLASS_COLORS[int(k) % 10] for k in labels]
    ax.scatter(x[:, 0], x[:, 1], s=s, alpha=alpha, c=colors, linewidths=0, **kwargs)
    ax.set_aspect("equal")
    if legend:
        if labels is None:
            raise ValueError("legend=True needs labels: a legend names the classes the colours stand for.")
        handles = [plt.Line2D([], [], ls="", marker="o", color=CLASS_COLORS[k % 10], label=f"class {k}")
                   for k in sorted(set(int(k) for k in labels))]
        ax.legend(handles=handles, fontsize=7, loc="upper left", markerscale=1.2,
                  title=legend if isinstance(legend, str) else None, title_fontsize=7)
    return ax


def density_contours(ax, log_density, *, extent=(-4, 4, -4, 4), n: int = 150, levels: int = 8, **kwargs):
    """Contours of exp(log_density(points)) over a grid; log_density maps (M, 2) -> (M,)."""
    xs, ys = torch.linspace(extent[0], extent[1], n), torch.linspace(extent[2], extent[3], n)
    pts = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    z = log_density(pts).exp().reshape(n, n).detach().cpu().numpy()
    ax.contour(xs.numpy(), ys.numpy(), z, levels=levels, **kwargs)
    return ax


def to_png(obj, *, upscale: int = 1, nrow: int | None = None) -> bytes:
    """PNG bytes of a matplotlib Figure (closed afterwards) or of (N, C, H, W) images in [-1, 1]."""
    buf = io.BytesIO()
    if isinstance(obj, plt.Figure):
        obj.savefig(buf, format="png", dpi=obj.dpi, bbox_inches="tight")
        plt.close(obj)
        return buf.getvalue()
    if torch.is_tensor(obj):
        grid = (image_grid(obj, nrow=nrow) * 255).round().astype(np.uint8)
        grid = grid.repeat(upscale, 0).repeat(upscale, 1)
        Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(buf, format="PNG")
        return buf.getvalue()
    raise TypeError(f"to_png takes a matplotlib Figure or an image tensor, got {type(obj).__name__}.")


def forest(ax, rows, *, xlabel: str, title: str | None = None, better: str | None = None):
    """A forest plot: one row per arm, its paired difference from the baseline with the 95% interval, a line at 0.

    ``rows`` is a sequence of (label, :class:`~lessonlib.stats.PairedDifference`). A filled marker is a difference
    whose interval excludes 0 (callable at this N), a hollow one is not; ``better`` ("left" or "right") labels the
    side that is better. Readable in greyscale: the fill, not a colour, carries the verdict.
    """
    if not rows:
        raise ValueError("give at least one (label, PairedDifference) row.")
    if better not in (None, "left", "right"):
        raise ValueError(f"better must be 'left', 'right' or None, got {better!r}.")
    for k, (label, d) in enumerate(rows):
        if not isinstance(d, PairedDifference):
            raise ValueError(f"row {label!r}: expected a PairedDifference, got a {type(d).__name__}.")
        y = len(rows) - 1 - k
        ax.plot([d.lo, d.hi], [y, y], color="k", lw=1.5)
        ax.plot([d.diff], [y], "o", ms=7, mec="k", mfc="k" if d.excludes_zero else "white")
    ax.axvline(0, color="0.5", ls="--", lw=1)
    ax.set_yticks(range(len(rows)), [label for label, _ in rows][::-1])
    ax.set_ylim(-0.7, len(rows) - 0.3)
    if better:
        xlabel = f"{xlabel}  ({'<- better' if better == 'left' else 'better ->'})"
    ax.set(xlabel=xlabel, title=title)
    return ax


def weight_map(ax, values, rows, cols, *, row_label: str, col_label: str, title: str, fmt: str = ".2f",
               cmap: str = "viridis"):
    """A grid of measurements over two guidance weights (rows bottom to top, columns left to right), each cell
    written in it, in ink that stays readable on the cell's colour (lessons 06, 08)."""
    grid = np.asarray(values, dtype=float)
    if grid.shape != (len(rows), len(cols)):
        raise ValueError(f"values must be {len(rows)} x {len(cols)} (rows x cols), got shape {grid.shape}.")
    image = ax.imshow(grid, origin="lower", cmap=cmap)
    for i in range(len(rows)):
        for j in range(len(cols)):
            r, g, b, _ = image.cmap(image.norm(grid[i, j]))
            ink = "k" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "w"  # dark text on light cells
            ax.text(j, i, format(grid[i, j], fmt), ha="center", va="center", fontsize=8, color=ink)
    ax.set_xticks(range(len(cols)), [f"{c:g}" for c in cols])
    ax.set_yticks(range(len(rows)), [f"{r:g}" for r in rows])
    ax.set(xlabel=col_label, ylabel=row_label, title=title)
    return image
