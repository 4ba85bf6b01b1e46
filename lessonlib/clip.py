"""One CLIP interface over two backends (lessons 05, 06, 08).

- :class:`SmallCLIP`: open_clip's own ``CLIP`` class with a small custom config (a ViT on 28 x 28
  digits with 7 x 7 patches, a 3-layer text transformer) and open_clip's BPE tokenizer, trained here on
  captioned digits with the symmetric contrastive loss and a learned temperature (recipe ``mnist-clip``).
- :class:`PretrainedCLIP`: any open_clip model by name and tag (or a local weights file), with its own
  differentiable resize and normalisation, for machines that can download weights.

Both take images in [-1, 1] (NCHW), are differentiable end to end (so they serve guidance, lesson 06),
and share :meth:`encode_image`, :meth:`encode_text`, :attr:`logit_scale` and :func:`zero_shot`.
"""
from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .captions import AttributeBins

__all__ = ["SmallCLIPConfig", "SmallCLIP", "PretrainedCLIP", "PretrainedUnavailable", "load_pretrained",
           "text_condition", "null_condition", "contrastive_loss", "class_embeddings", "image_features", "zero_shot", "ZeroShot"]

_BINS = 5  # thickness (2 edges), slant (2), size (1)


class PretrainedUnavailable(RuntimeError):
    """Pretrained CLIP weights are neither cached nor downloadable from here."""


class _ClipBase(nn.Module):
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

    def encode_image(self, images: Tensor, *, normalize: bool = True) -> Tensor:
        """Image embeddings (B, D), unit length by default; gradients flow to the pixels (lesson 06)."""
        feats = self.model.encode_image(self._model_input(self._check_images(images)))
        return F.normalize(feats, dim=-1) if normalize else feats

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


class SmallCLIP(_ClipBase):
    """open_clip.CLIP with a digit-sized config and open_clip's tokenizer; trained in lesson 05.

    The attribute word boundaries it was trained with travel with it (a buffer), see :attr:`bins`.
    """

    def __init__(self, config: SmallCLIPConfig | None = None, **overrides):
        super().__init__()
        import open_clip
        from open_clip.model import CLIPTextCfg, CLIPVisionCfg

        cfg = config or SmallCLIPConfig(**overrides)
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


class PretrainedCLIP(_ClipBase):
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


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _cached_weights(name: str, tag: str) -> str | None:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(name, tag)
    repo = cfg.get("hf_hub", "")
    if not repo:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo_id, filename = os.path.split(repo)
    for fname in ([filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]):
        found = try_to_load_from_cache(repo_id, fname)
        if isinstance(found, str):
            return found
    return None


def load_pretrained(name: str = "ViT-B-32", pretrained: str = "laion2b_s34b_b79k", *, device=None) -> PretrainedCLIP:
    """A pretrained open_clip model by name and tag, or from a local weights file (lesson 05).

    Decides in seconds whether weights can be had (a file path, the Hugging Face cache, or a reachable
    hub) and raises :class:`PretrainedUnavailable` with what to do otherwise, instead of waiting on
    open_clip's download retries.
    """
    import open_clip

    if name not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if name.lower().split("-")[0] in m.lower()][:8]
        raise ValueError(f"unknown open_clip model {name!r}; close names: {close or 'none'}. "
                         "See open_clip.list_models().")
    source = pretrained
    if not Path(pretrained).expanduser().is_file():
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise ValueError(f"{pretrained!r} is neither a weights file nor a tag of {name}; its tags: {tags}.")
        source = _cached_weights(name, pretrained)
        if source is None:
            if not _hub_reachable():
                raise PretrainedUnavailable(
                    f"the weights of {name} ({pretrained}) are not cached here and the Hugging Face hub cannot be "
                    "reached (offline). On a machine with internet run open_clip.create_model("
                    f"{name!r}, pretrained={pretrained!r}) once and copy ~/.cache/huggingface here, or pass "
                    "pretrained='/path/to/weights.safetensors'. Offline, the lessons use the small CLIP (mnist-clip).")
            source = pretrained  # reachable: let open_clip download it
    else:
        source = str(Path(pretrained).expanduser())
    model = open_clip.create_model(name, pretrained=source, device=device or "cpu")
    return PretrainedCLIP(model, open_clip.get_tokenizer(name), name=f"{name} ({pretrained})").to(device or "cpu")


def text_condition(clip: SmallCLIP, texts) -> dict:
    """A text-conditioned U-Net's condition from the frozen CLIP: token features, their mask, the pooled vector
    and a ``null`` flag (all False; see :func:`null_condition`) (lesson 08)."""
    with torch.no_grad():
        tokens, mask, pooled = clip.encode_tokens(texts)
    return {"tokens": tokens, "mask": mask, "vec": pooled, "null": torch.zeros(len(tokens), dtype=torch.bool)}


def null_condition(cond: dict) -> dict:
    """The same condition with every row switched to the learned null text (the unconditional branch)."""
    return {**cond, "null": torch.ones_like(cond["null"])}


def contrastive_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE: mean of CE(rows) and CE(columns) of the B x B logits s * I T^T, targets on the diagonal."""
    logits = logit_scale * F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


@torch.no_grad()
def class_embeddings(clip: _ClipBase, class_names, templates) -> Tensor:
    """Prompt ensembling: per class, the renormalised mean of its unit text embeddings over templates (C, D)."""
    templates = [templates] if isinstance(templates, str) else list(templates)
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"templates need a '{{}}' slot for the class name, got {templates!r}.")
    rows = [F.normalize(clip.encode_text([t.format(c) for t in templates]).mean(0), dim=0) for c in class_names]
    return torch.stack(rows)


@dataclass
class ZeroShot:
    """Zero-shot predictions: logits (N, C) at the chosen temperature, predicted class indices (N,)."""

    logits: Tensor
    pred: Tensor

    def accuracy(self, labels: Tensor) -> float:
        return float((self.pred == labels.to(self.pred.device)).float().mean())

    def nll(self, labels: Tensor) -> float:
        """Mean negative log-likelihood of the true classes: the number temperature changes (accuracy does not)."""
        return float(F.cross_entropy(self.logits, labels.to(self.logits.device)))


@torch.no_grad()
def image_features(clip: _ClipBase, images: Tensor, *, batch: int = 500) -> Tensor:
    """Unit image embeddings (N, D) computed in batches, to reuse across many zero-shot questions."""
    return torch.cat([clip.encode_image(images[i:i + batch]) for i in range(0, len(images), batch)])


@torch.no_grad()
def zero_shot(clip: _ClipBase, images: Tensor, class_names, templates=("{}",), *, temperature: float | None = None,
              batch: int = 500) -> ZeroShot:
    """Classify images by cosine similarity to class prompts, logits = cos / temperature (lesson 05).

    ``images`` are (N, C, H, W) in [-1, 1], or their :func:`image_features` (N, D) computed once.
    ``temperature=None`` uses the model's learned one (1 / logit_scale).
    """
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}.")
    scale = clip.logit_scale if temperature is None else torch.tensor(1.0 / temperature)
    classes = class_embeddings(clip, class_names, templates)
    feats = images if images.ndim == 2 else image_features(clip, images, batch=batch)
    if feats.shape[1] != classes.shape[1]:
        raise ValueError(f"image features have {feats.shape[1]} dimensions, the text embeddings {classes.shape[1]}.")
    logits = scale * feats.to(classes.device) @ classes.T
    return ZeroShot(logits.cpu(), logits.argmax(1).cpu())
