"""CLIP's two image-text models behind one interface (lessons 05, 06, 08).

- :class:`SmallCLIP`: open_clip's own ``CLIP`` class with a small custom config (a ViT on 28 x 28
  digits with 7 x 7 patches, a 3-layer text transformer) and open_clip's BPE tokenizer, trained here on
  captioned digits with the symmetric contrastive loss and a learned temperature (recipe ``mnist-clip``).
- :class:`PretrainedCLIP`: a pretrained open_clip model (built by :func:`lessonlib.clip.load_pretrained`),
  with its own differentiable resize and normalisation.

Both take images in [-1, 1] (NCHW), are differentiable end to end (so they serve guidance, lesson 06),
and share :meth:`encode_image`, :meth:`encode_text` and :attr:`logit_scale`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from torch import Tensor, nn

from ..captions import AttributeBins
from ..devices import follows_inputs
from .config import resolve_config

__all__ = ["ClipModel", "SmallCLIPConfig", "SmallCLIP", "PretrainedCLIP"]

_BINS = 5  # thickness (2 edges), slant (2), size (1)


class ClipModel(nn.Module):
    """What both backends share: checks, tokenizing, normalised embeddings, the learned temperature."""

    context_length: int

    def _model_input(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def _check_images(self, images: Tensor) -> Tensor:
        if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"CLIP takes images (B, 1 or 3, H, W) in [-1, 1], got {shape}.")
        lo, hi = float(images.detach().min()), float(images.detach().max())
        if hi > 5 or lo < -5 or lo >= 0:
            raise ValueError(f"CLIP takes images in [-1, 1] (background -1); these span [{lo:.2f}, {hi:.2f}]. "
                             "Convert [0, 1] images with 2 x - 1 and uint8 images with x / 127.5 - 1.")
        return images

    def tokenize(self, texts) -> Tensor:
        """Token ids (B, context_length); empty or over-long prompts raise a ValueError that says why."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("give at least one prompt.")
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"prompts must be non-empty strings, got {text!r}; describe the image, e.g. 'a thick seven'.")
            n = len(self.tokenizer.encode(text)) + 2  # + start and end tokens
            if n > self.context_length:
                raise ValueError(f"the prompt {text!r} has {n} tokens with start and end; this CLIP reads at most "
                                 f"{self.context_length}. Shorten it.")
        return self.tokenizer(texts, context_length=self.context_length).to(self.logit_scale.device)

    @follows_inputs
    def encode_image(self, images: Tensor, *, normalize: bool = True) -> Tensor:
        """Image embeddings (B, D), unit length by default; gradients flow to the pixels (lesson 06)."""
        feats = self.model.encode_image(self._model_input(self._check_images(images)))
        return F.normalize(feats, dim=-1) if normalize else feats

    @follows_inputs
    def encode_text(self, texts, *, normalize: bool = True) -> Tensor:
        """Text embeddings (B, D) of prompts (a string or a list of strings), unit length by default."""
        feats = self.model.encode_text(self.tokenize(texts))
        return F.normalize(feats, dim=-1) if normalize else feats

    @property
    def logit_scale(self) -> Tensor:
        """exp of the learned log-scale, capped at 100 as in CLIP: logits are logit_scale * cos (1 / temperature)."""
        return self.model.logit_scale.exp().clamp(max=100.0)


@dataclass
class SmallCLIPConfig:
    in_channels: int = 1
    image_size: int = 28
    embed_dim: int = 64
    patch_size: int = 7  # 4 x 4 patches of 7 x 7 pixels: 2.5x faster to train than 4 x 4 pixels on a CPU
    vision_width: int = 96
    vision_layers: int = 4
    vision_head_width: int = 32
    text_width: int = 32  # the 49,408-row token table dominates the file: 32 keeps it at 6.3 MB
    text_heads: int = 2
    text_layers: int = 3
    context_length: int = 24

    def to_dict(self) -> dict:
        return asdict(self)


class SmallCLIP(ClipModel):
    """open_clip.CLIP with a digit-sized config and open_clip's tokenizer; trained in lesson 05.

    The attribute word boundaries it was trained with travel with it (a buffer), see :attr:`bins`.
    """

    def __init__(self, config: SmallCLIPConfig | None = None, **overrides):
        super().__init__()
        cfg = resolve_config(SmallCLIPConfig, config, overrides)
        self.config, self.context_length = cfg, cfg.context_length
        vision = CLIPVisionCfg(layers=cfg.vision_layers, width=cfg.vision_width, head_width=cfg.vision_head_width,
                               patch_size=cfg.patch_size, image_size=cfg.image_size)
        text = CLIPTextCfg(context_length=cfg.context_length, width=cfg.text_width, heads=cfg.text_heads,
                           layers=cfg.text_layers)
        self.model = open_clip.CLIP(cfg.embed_dim, vision, text)
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=cfg.context_length)
        self.register_buffer("attribute_edges", torch.zeros(_BINS))

    @property
    def bins(self) -> AttributeBins:
        """The caption word boundaries (thickness, slant, size) measured on this model's training data."""
        e = self.attribute_edges.tolist()
        if not any(e):
            raise RuntimeError("this SmallCLIP was never trained: it has no attribute bins.")
        return AttributeBins(thickness=(e[0], e[1]), slant=(e[2], e[3]), size=(e[4],))

    @follows_inputs
    def encode_tokens(self, texts) -> tuple[Tensor, Tensor, Tensor]:
        """Per-token features (B, L, text_width) after the final LayerNorm, their mask (B, L), True up to and
        including the end token, and the unit pooled embedding (B, D) that :meth:`encode_text` returns (lesson 08)."""
        ids, m = self.tokenize(texts), self.model
        x = m.ln_final(m.transformer(m.token_embedding(ids) + m.positional_embedding, attn_mask=m.attn_mask))
        end = ids.argmax(-1)  # the end token has the largest id: open_clip's 'argmax' pooling
        mask = torch.arange(ids.shape[1], device=ids.device)[None] <= end[:, None]
        pooled = x[torch.arange(len(ids), device=ids.device), end] @ m.text_projection
        return x, mask, F.normalize(pooled, dim=-1)

    def set_bins(self, bins: AttributeBins) -> None:
        self.attribute_edges.copy_(torch.tensor([*bins.thickness, *bins.slant, *bins.size]))

    def _model_input(self, images: Tensor) -> Tensor:
        cfg = self.config
        if images.shape[1:] != (cfg.in_channels, cfg.image_size, cfg.image_size):
            raise ValueError(f"this CLIP takes images (B, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size}), "
                             f"got {tuple(images.shape)}.")
        return images.expand(-1, 3, -1, -1) if cfg.in_channels == 1 else images


class PretrainedCLIP(ClipModel):
    """A pretrained open_clip model behind the course's interface: [-1, 1] in, its own resize and normalisation."""

    def __init__(self, model: nn.Module, tokenizer, *, name: str = ""):
        super().__init__()
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.context_length = int(getattr(model, "context_length", 77))
        visual = model.visual
        size = getattr(visual, "image_size", 224)
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        mean = getattr(visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
        std = getattr(visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def _model_input(self, images: Tensor) -> Tensor:
        x = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        x = F.interpolate((x + 1) / 2, size=self.image_size, mode="bicubic", align_corners=False)
        return (x - self.mean) / self.std
