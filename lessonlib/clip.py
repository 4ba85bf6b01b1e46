"""CLIP as a classifier: the contrastive objective, zero-shot prediction, pretrained weights (lesson 05).

The models themselves live in :mod:`lessonlib.nets.clip` (:class:`SmallCLIP`, trained here, and
:class:`PretrainedCLIP`); this module is what one does with either:

- :func:`contrastive_loss`: symmetric InfoNCE over the B x B image-text similarity matrix;
- :func:`class_embeddings`, :func:`zero_shot`: classify by cosine similarity to prompts, with templates
  and prompt ensembling, at the learned or a chosen temperature;
- :func:`attribute_auc`: does "a thick three" rank thick threes above thin ones (a compositional test);
- :func:`load_pretrained`: an open_clip model by name and tag or a local file, decided in seconds offline.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor

from .nets.clip import ClipModel, PretrainedCLIP
from .stats import auc_interval

__all__ = ["PretrainedUnavailable", "load_pretrained", "contrastive_loss", "class_embeddings", "image_features",
           "zero_shot", "ZeroShot", "attribute_auc"]


class PretrainedUnavailable(RuntimeError):
    """Pretrained CLIP weights are neither cached nor downloadable from here."""


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _cached_weights(name: str, tag: str) -> str | None:
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


def contrastive_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE: mean of CE(rows) and CE(columns) of the B x B logits s * I T^T, targets on the diagonal."""
    logits = logit_scale.to(image_emb.device) * F.normalize(image_emb, dim=-1) @ F.normalize(text_emb.to(image_emb.device), dim=-1).T
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


@torch.no_grad()
def class_embeddings(clip: ClipModel, class_names, templates) -> Tensor:
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
def image_features(clip: ClipModel, images: Tensor, *, batch: int = 500) -> Tensor:
    """Unit image embeddings (N, D) computed in batches, to reuse across many zero-shot questions."""
    return torch.cat([clip.encode_image(images[i:i + batch]) for i in range(0, len(images), batch)])


@torch.no_grad()
def zero_shot(clip: ClipModel, images: Tensor, class_names, templates=("{}",), *, temperature: float | None = None,
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
    logits = scale.to(classes.device) * feats.to(classes.device) @ classes.T
    return ZeroShot(logits.cpu(), logits.argmax(1).cpu())


@torch.no_grad()
def attribute_auc(clip: ClipModel, feats: Tensor, words: list[str], class_name: str, low: str, high: str,
                  templates=("{}",)) -> tuple[float, float]:
    """AUC (and its 95% half-width) of ranking ``high`` images above ``low`` ones by text alone (lesson 05).

    ``feats`` are unit image embeddings (N, D) of images of one class, ``words`` their measured attribute
    words (N,). Each image scores cos(image, "{high} {class_name}") - cos(image, "{low} {class_name}")
    (prompt-ensembled over ``templates``); the AUC compares images whose word is ``high`` with those whose
    word is ``low``. 0.5: the text says nothing about the attribute; 1: a perfect ranking.
    """
    if feats.ndim != 2 or len(feats) != len(words):
        raise ValueError(f"feats must be (N, D) with one word per image; got {tuple(feats.shape)} and {len(words)} words.")
    hi, lo = class_embeddings(clip, [f"{high} {class_name}", f"{low} {class_name}"], templates)
    score = (feats.to(hi.device) @ (hi - lo)).cpu()
    is_high = torch.tensor([w == high for w in words])
    is_low = torch.tensor([w == low for w in words])
    return auc_interval(score[is_high], score[is_low])
