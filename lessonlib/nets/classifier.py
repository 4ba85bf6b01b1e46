"""Classifiers: the judge (lesson 02) and the noise-aware classifier f(x_t, t) (lesson 03).

The judge is a clean MNIST classifier used only to measure samples, never for guidance: guiding with
the network that scores the result would reward adversarial pixels, not digits. Its penultimate
features (128-d) serve FID_judge and diversity.

The noise-aware classifier reuses the U-Net's downsampling path (FiLM residual blocks driven by a time
embedding) and ends in a pooled linear head, as in Dhariwal & Nichol (2021). Trained on q_sample(x0, t)
at every t it gives log p(y | x_t), whose gradient guides sampling (lesson 04).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from ..devices import follows_inputs
from .config import resolve_config
from .embedding import TimeMLP
from .unet import ResBlock, SelfAttention

__all__ = ["JudgeConfig", "JudgeNet", "NoisyClassifierConfig", "NoisyClassifier"]


@dataclass
class JudgeConfig:
    in_channels: int = 1
    num_classes: int = 10
    width: int = 32
    feature_dim: int = 128
    dropout: float = 0.3

    def to_dict(self) -> dict:
        return asdict(self)


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class JudgeNet(nn.Module):
    """VGG-style CNN: 2 conv blocks with pooling, a conv to ``feature_dim``, global average pool, linear head."""

    def __init__(self, config: JudgeConfig | None = None, **overrides):
        super().__init__()
        cfg = resolve_config(JudgeConfig, config, overrides)
        self.config = cfg
        w = cfg.width
        self.body = nn.Sequential(
            _conv(cfg.in_channels, w), _conv(w, w), nn.MaxPool2d(2),
            _conv(w, 2 * w), _conv(2 * w, 2 * w), nn.MaxPool2d(2),
            _conv(2 * w, cfg.feature_dim), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.feature_dim, cfg.num_classes))

    @follows_inputs
    def features(self, x: Tensor) -> Tensor:
        """Penultimate features (B, feature_dim), the space in which FID_judge and diversity are measured."""
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"the judge takes images (B, {self.config.in_channels}, H, W) in [-1, 1], got {tuple(x.shape)}.")
        return self.body(x)

    @follows_inputs
    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@dataclass
class NoisyClassifierConfig:
    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 10
    stem_stride: int = 2  # 2: the first convolution halves the resolution (28 -> 14), for CPU speed
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = ()
    groups: int = 8

    def __post_init__(self):
        self.channel_mults = tuple(self.channel_mults)
        self.attention_resolutions = tuple(self.attention_resolutions)

    def to_dict(self) -> dict:
        return asdict(self)


class NoisyClassifier(nn.Module):
    """f(x_t, t) -> class logits: the U-Net's encoder with a time embedding, then pool and a linear head (lesson 03)."""

    def __init__(self, config: NoisyClassifierConfig | None = None, **overrides):
        super().__init__()
        cfg = resolve_config(NoisyClassifierConfig, config, overrides)
        self.config = cfg
        C, g = cfg.base_channels, cfg.groups
        emb_dim = 4 * C
        self.time_mlp = TimeMLP(C, emb_dim)
        self.inp = nn.Conv2d(cfg.in_channels, C, 3, stride=cfg.stem_stride, padding=1)
        self.blocks, ch, res = nn.ModuleList(), C, (cfg.image_size + cfg.stem_stride - 1) // cfg.stem_stride
        for level, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.num_res_blocks):
                self.blocks.append(ResBlock(ch, C * mult, emb_dim, groups=g))
                ch = C * mult
                if res in cfg.attention_resolutions:
                    self.blocks.append(SelfAttention(ch, groups=g))
            if level < len(cfg.channel_mults) - 1:
                self.blocks.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                res = (res + 1) // 2
        self.head = nn.Sequential(nn.GroupNorm(g, ch), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(ch, cfg.num_classes))

    @follows_inputs
    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        cfg = self.config
        if x.ndim != 4 or x.shape[1:] != (cfg.in_channels, cfg.image_size, cfg.image_size):
            raise ValueError(f"this classifier takes images (B, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size}) "
                             f"in [-1, 1], got {tuple(x.shape)}.")
        emb = self.time_mlp(t.reshape(-1).expand(x.shape[0]))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        return self.head(h)

    @follows_inputs
    def log_prob(self, x: Tensor, t: Tensor) -> Tensor:
        """log p(y | x_t) for every class, (B, num_classes)."""
        return F.log_softmax(self(x, t), dim=1)
