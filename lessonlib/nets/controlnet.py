"""ControlNet on the course's U-Net: a frozen base, a trainable copy of its encoder, zero convolutions (lesson 10).

Zhang, Rao & Agrawala 2023. The copy reads x_t plus a spatial hint (here a coarse ink layout) and its
features join the frozen base's skip connections and middle through 1x1 convolutions whose weights and
biases start at zero:

    eps = base.decode(h_mid + Z_mid(c_mid), [s_i + Z_i(c_i)])     with (c_i, c_mid) = copy.encode(x_t, t, y, hint)

At initialisation every Z outputs 0, so the ControlNet predicts exactly what the base predicts; the
gradient with respect to Z's weights is (upstream gradient) x (copy's features), which is not zero, so
training starts at once without disturbing the base. ``ControlNet(config)(x, t, {"class": y, "hint": h})``
is an eps-model like any other; ``strength`` scales every residual (0: the base model alone).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch.nn.functional as F
from torch import Tensor, nn

from ..devices import follows_inputs
from .config import config_from_dict, resolve_config
from .unet import UNet, UNetConfig, zero_init

__all__ = ["ControlNetConfig", "ControlNet", "zero_conv"]


def zero_conv(channels: int) -> nn.Conv2d:
    """A 1x1 convolution with weight and bias zero: outputs 0 at initialisation, still learns (lesson 10)."""
    return zero_init(nn.Conv2d(channels, channels, 1))


@dataclass
class ControlNetConfig:
    """The base U-Net's config plus the hint encoder's shape (saved in the zoo manifest)."""

    unet: dict = field(default_factory=lambda: asdict(UNetConfig()))
    hint_channels: int = 1
    hint_hidden: int = 16

    def __post_init__(self):
        self.unet = asdict(config_from_dict(UNetConfig, self.unet))  # validated, tuples as tuples

    def to_dict(self) -> dict:
        return asdict(self)


class ControlNet(nn.Module):
    """Frozen ``base`` U-Net + trainable encoder copy fed a hint through zero convolutions (lesson 10)."""

    def __init__(self, config: ControlNetConfig | None = None, **overrides):
        super().__init__()
        cfg = resolve_config(ControlNetConfig, config, overrides)
        self.config = cfg
        unet_cfg = config_from_dict(UNetConfig, cfg.unet)
        self.base = UNet(unet_cfg).requires_grad_(False)
        self.control = UNet(unet_cfg)
        self.control.up, self.control.out = nn.ModuleList(), nn.Identity()  # only the encoder half is copied
        p, C = unet_cfg.patch_size, unet_cfg.base_channels
        self.hint_encoder = nn.Sequential(
            nn.Conv2d(cfg.hint_channels * p * p, cfg.hint_hidden, 3, padding=1), nn.SiLU(),
            nn.Conv2d(cfg.hint_hidden, cfg.hint_hidden, 3, padding=1), nn.SiLU(),
            nn.Conv2d(cfg.hint_hidden, C, 3, padding=1))
        self.hint_zero = zero_conv(C)
        self.zero_convs = nn.ModuleList(zero_conv(c) for c in self.base.skip_channels())
        self._strength = 1.0

    @property
    def strength(self) -> float:
        """Multiplies every residual the copy adds: 0 is the base model alone, 1 is as trained."""
        return self._strength

    @strength.setter
    def strength(self, value: float) -> None:
        value = float(value)
        if not value >= 0 or value == float("inf"):
            raise ValueError(f"strength must be a finite number >= 0 (0 = the base model, 1 = as trained), got {value}.")
        self._strength = value

    @classmethod
    def from_base(cls, base: UNet, **overrides) -> "ControlNet":
        """Wrap a trained U-Net: the base is frozen, the copy starts from the base's encoder weights."""
        net = cls(ControlNetConfig(unet=base.config.to_dict(), **overrides))
        state = base.state_dict()
        net.base.load_state_dict(state)
        missing, unexpected = net.control.load_state_dict(state, strict=False)
        assert not missing, missing  # the copy's keys are a subset of the base's
        return net.to(next(base.parameters()).device)

    def train(self, mode: bool = True) -> "ControlNet":
        super().train(mode)
        self.base.eval()  # frozen: never in training mode (dropout)
        return self

    def trainable_parameters(self) -> int:
        return sum(q.numel() for q in self.parameters() if q.requires_grad)

    @follows_inputs
    def residuals(self, x: Tensor, t: Tensor, cond: dict) -> list[Tensor]:
        """The zero-convolved features the copy adds to the base's skips and middle (all zero at init)."""
        hint = cond["hint"]
        cfg = self.base.config
        if hint.shape != (x.shape[0], self.config.hint_channels, cfg.image_size, cfg.image_size):
            raise ValueError(f"'hint' must have shape ({x.shape[0]}, {self.config.hint_channels}, {cfg.image_size}, "
                             f"{cfg.image_size}) (see lessonlib.transforms.coarse_layout), got {tuple(hint.shape)}.")
        if cfg.patch_size > 1:
            hint = F.pixel_unshuffle(hint, cfg.patch_size)
        added = self.hint_zero(self.hint_encoder(hint))
        h, hs, _, _ = self.control.encode(x, t, _base_cond(cond), added=added)
        return [zero(f) * self.strength for zero, f in zip(self.zero_convs, [*hs, h])]

    @follows_inputs
    def forward(self, x: Tensor, t: Tensor, cond: dict | None = None) -> Tensor:
        if not isinstance(cond, dict) or cond.get("hint") is None:
            raise ValueError("a ControlNet needs cond={'class': labels, 'hint': layout}; make the hint with "
                             "coarse_layout(images), or call net.base for the model without control.")
        if self.strength == 0:
            return self.base(x, t, _base_cond(cond))
        return self.base(x, t, _base_cond(cond), residuals=self.residuals(x, t, cond))


def _base_cond(cond: dict):
    rest = {k: v for k, v in cond.items() if k != "hint"}
    return rest.get("class") if set(rest) <= {"class"} else rest
