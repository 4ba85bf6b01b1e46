"""The "bad" branch of the perturbation guiders, from the same U-Net (issue 38; lesson 11).

Perturbed-attention guidance (PAG, Ahn et al. 2024), smoothed-energy guidance (SEG, Hong 2024) and skip-layer
guidance (SLG, as in Stable Diffusion 3.5) compare the model's conditional prediction with that of the *same*
network with chosen self-attention layers damaged, and push away from the damaged one
(:func:`lessonlib.guiders.perturbed_rule`). ``with perturbed(unet, layers, kind):`` damages them for the block
and restores them after it, also when the block raises:

| kind         | what the chosen layers compute                            | guider |
| ------------ | --------------------------------------------------------- | ------ |
| ``identity`` | attention matrix = identity: each position keeps its value | PAG   |
| ``blur``     | queries blurred by a Gaussian of std ``sigma`` positions   | SEG   |
| ``skip``     | the layer is left out (its residual adds nothing)          | SLG   |

Layers are named by :func:`attention_layers` (``"down.0"``, ``"mid"``, ``"up.1"``, ...) or indexed in the order
of computation.

``with skipped_blocks(unet, blocks, dropout=1.0):`` does the same for residual blocks (:func:`res_blocks`: names
such as ``"down.0.0"``, ``"mid.2"``): each chosen block's residual branch is dropped (``dropout`` 1: left out, the
block is its skip path; below 1, dropout of that probability, as diffusers' ``LayerSkipConfig(dropout=...)``).
The damaged network is the "bad" model of layer-skip autoguidance (diffusers' ``AutoGuidance`` with
``auto_guidance_layers``; :func:`lessonlib.guiders.layer_skip_autoguidance`).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, Sequence

from torch import nn

from .unet import ResBlock, SelfAttention, UNet

__all__ = ["PERTURBATIONS", "attention_layers", "perturbed", "res_blocks", "skipped_blocks"]

PERTURBATIONS = ("identity", "blur", "skip")


def attention_layers(unet: nn.Module) -> dict[str, SelfAttention]:
    """The U-Net's self-attention layers in the order of computation, named by where they sit."""
    if not isinstance(unet, UNet):
        raise ValueError(f"perturbations act on the course's UNet, got a {type(unet).__name__}.")
    found: dict[str, SelfAttention] = {}
    for part in ("down", "mid", "up"):
        for name, module in getattr(unet, part).named_modules():
            if isinstance(module, SelfAttention):
                stage = name.split(".")[0]
                found[part if part == "mid" else f"{part}.{stage}"] = module
    return found


@contextmanager
def perturbed(unet: nn.Module, layers: Sequence[int | str] | str = "all", kind: str = "identity", *,
              sigma: float = 2.0) -> Iterator[nn.Module]:
    """Within the block, ``layers`` of ``unet`` (names, indices, or ``"all"``) compute the perturbation ``kind``.

    ``sigma`` (``kind="blur"`` only): the Gaussian's std in attention positions, > 0, ``math.inf`` for SEG's
    infinite blur. Yields the model itself.
    """
    if kind not in PERTURBATIONS:
        raise ValueError(f"kind must be one of {PERTURBATIONS}, got {kind!r}.")
    if kind == "blur" and not (isinstance(sigma, (int, float)) and sigma > 0 and not math.isnan(sigma)):
        raise ValueError(f"sigma must be a positive number of positions (math.inf: a uniform blur), got {sigma!r}.")
    table = attention_layers(unet)
    if not table:
        raise ValueError("this U-Net has no self-attention layers (config.attention_resolutions is empty).")
    picked = _pick(table, layers, "self-attention layer")
    setting = ("blur", float(sigma)) if kind == "blur" else (kind,)
    with _setting(picked, "perturbation", setting):
        yield unet


def res_blocks(unet: nn.Module) -> dict[str, ResBlock]:
    """The U-Net's residual blocks in the order of computation, named by where they sit (``"down.0.0"``, ``"mid.2"``)."""
    if not isinstance(unet, UNet):
        raise ValueError(f"block skipping acts on the course's UNet, got a {type(unet).__name__}.")
    return {f"{part}.{name}": module for part in ("down", "mid", "up")
            for name, module in getattr(unet, part).named_modules() if isinstance(module, ResBlock)}


@contextmanager
def skipped_blocks(unet: nn.Module, blocks: Sequence[int | str] | str, *, dropout: float = 1.0) -> Iterator[nn.Module]:
    """Within the block, the residual branch of ``blocks`` of ``unet`` (names, indices or ``"all"``) is dropped with
    probability ``dropout`` in (0, 1] (1: the blocks are left out). Yields the model itself; restored on exit."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 < dropout <= 1:
        raise ValueError(f"dropout must lie in (0, 1] (1: the block is left out), got {dropout!r}.")
    with _setting(_pick(res_blocks(unet), blocks, "residual block"), "dropped", float(dropout)):
        yield unet


def _pick(table: dict[str, nn.Module], layers, what: str) -> list[nn.Module]:
    """The modules named or indexed by ``layers`` (or ``"all"``), with a clear error for anything else."""
    names = list(table)
    chosen = names if layers == "all" else list(layers) if not isinstance(layers, (str, int)) else [layers]
    if not chosen:
        raise ValueError(f"give at least one {what}: one of {names}, an index 0..{len(names) - 1}, or 'all'.")
    picked = []
    for layer in chosen:
        if isinstance(layer, bool) or not isinstance(layer, (int, str)):
            raise ValueError(f"a {what} is a name or an index, got {layer!r}.")
        if isinstance(layer, int):
            if not 0 <= layer < len(names):
                raise ValueError(f"{what} index {layer} out of range: this U-Net has {len(names)} ({names}).")
            layer = names[layer]
        if layer not in table:
            raise ValueError(f"unknown {what} {layer!r}: this U-Net's are {names}.")
        picked.append(table[layer])
    return picked


@contextmanager
def _setting(modules: list[nn.Module], attribute: str, value) -> Iterator[None]:
    """Set ``attribute`` on each module for the block, and restore the old values after it, also after an error."""
    before = [getattr(m, attribute) for m in modules]
    try:
        for m in modules:
            setattr(m, attribute, value)
        yield
    finally:
        for m, old in zip(modules, before):
            setattr(m, attribute, old)
