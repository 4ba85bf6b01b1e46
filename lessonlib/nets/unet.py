"""A small U-Net eps-model (lesson 02), with the conditioning hooks later lessons use.

``UNet(config)(x_t, t, cond=None) -> eps_hat``. The time embedding (sinusoidal, then an MLP) and any
condition embedding are summed into one vector ``emb`` that modulates every residual block by
adaptive group norm (FiLM): GN(h) * (1 + scale(emb)) + shift(emb).

Conditions (``cond``):
- ``None``: unconditional (for a conditional model, the learned null condition);
- a long tensor (B,) of class labels, with ``NULL_CLASS`` (-1, :mod:`lessonlib.types`) meaning the null class
  (lesson 07);
- a dict with any of ``"class"`` (B,), ``"vec"`` (B, cond_dim) pooled text vectors, ``"tokens"``
  (B, L, context_dim) text token features read by cross-attention with their ``"mask"`` (B, L) (True =
  a real token), and a ``"null"`` bool mask (B,) that swaps in the learned null vector and null token
  (caption dropout, lesson 08).
References: Ho et al. 2020 (architecture), Dhariwal & Nichol 2021 (AdaGN), Perez et al. 2018 (FiLM),
Rombach et al. 2022 (cross-attention on text tokens).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..devices import follows_inputs
from ..schedules import make_schedule
from ..types import NULL_CLASS
from .config import resolve_config
from .embedding import TimeMLP

__all__ = ["UNetConfig", "UNet", "ResBlock", "SelfAttention", "CrossAttention", "INJECTIONS", "PREDICTIONS", "zero_init",
           "modulate", "describe_unet", "blur_positions"]

INJECTIONS = ("film", "concat", "adaln_zero")
# what the network outputs: eps; a flow-matching velocity (float t in [0, 1], lesson 12); or v = sqrt(abar) eps -
# sqrt(1 - abar) x0 (Salimans & Ho 2022), which forward converts to eps with the config's noise schedule
PREDICTIONS = ("eps", "velocity", "v")
CONCAT_CHANNELS = 8  # width of the learned class maps concatenated to the input (class_injection="concat")


def zero_init(layer: nn.Module) -> nn.Module:
    """Set a layer's weight and bias to zero, so it outputs 0 until trained (residual branches, ControlNet); returns it."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


@dataclass
class UNetConfig:
    """Shape of the U-Net; every lesson's model is one of these (saved in the zoo manifest)."""

    in_channels: int = 1
    image_size: int = 28
    patch_size: int = 1  # 2: space-to-depth in, pixel-shuffle out, so the U-Net works at half resolution
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (7,)
    num_classes: int | None = None  # class conditioning with a learned null class
    cond_dim: int | None = None  # pooled-vector conditioning (text) with a learned null vector
    context_dim: int | None = None  # token cross-attention at the attention resolutions and the middle (lesson 08)
    class_injection: str = "film"  # how class labels enter (lesson 10): "film", "concat" or "adaln_zero"
    dropout: float = 0.0
    groups: int = 8
    prediction: str = "eps"  # "eps" (integer DDPM timesteps), "velocity" (flow matching, float t in [0, 1], lesson 12) or "v"
    schedule: str = "linear"  # prediction="v" only: the noise schedule (name, T) that converts v to eps; the recipe's
    T: int = 1000
    scale_range: tuple[float, float] | None = None  # a guidance-distilled student: cond["scale"] in this range (lesson 11)

    def __post_init__(self):
        self.channel_mults = tuple(self.channel_mults)
        if self.scale_range is not None:
            lo, hi = (float(v) for v in self.scale_range)
            if not 0 <= lo < hi:
                raise ValueError(f"scale_range must be (lo, hi) with 0 <= lo < hi, got {self.scale_range!r}.")
            self.scale_range = (lo, hi)
        self.attention_resolutions = tuple(self.attention_resolutions)
        factor = self.patch_size * 2 ** (len(self.channel_mults) - 1)
        if self.image_size % factor:
            raise ValueError(f"image_size {self.image_size} must be divisible by patch_size * 2^(levels-1) = "
                             f"{factor}; use fewer channel_mults or a smaller patch_size.")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}.")
        if self.prediction == "v":
            make_schedule(self.schedule, self.T)  # a bad name or T raises here, saying what is allowed
        if self.class_injection not in INJECTIONS:
            raise ValueError(f"class_injection must be one of {INJECTIONS}, got {self.class_injection!r}.")
        if self.class_injection == "concat" and not self.num_classes:
            raise ValueError("class_injection='concat' concatenates class maps to the input; it needs num_classes.")
        if self.base_channels % self.groups:
            raise ValueError(f"base_channels ({self.base_channels}) must be a multiple of groups ({self.groups}).")

    def to_dict(self) -> dict:
        return asdict(self)


def modulate(h: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """FiLM: h * (1 + scale) + shift, with one (scale, shift) per sample and channel, (B, C), over (B, C, H, W)."""
    return h * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


class ResBlock(nn.Module):
    """GN-SiLU-conv, FiLM from the embedding, GN-SiLU-dropout-conv (zero-initialised), plus a skip.

    ``gated=True`` is AdaLN-zero (Peebles & Xie 2023, lesson 10): the embedding also gives a per-channel
    gate on the residual branch, and the whole modulation (scale, shift, gate) starts at zero, so the
    block starts as its skip path; the last convolution then keeps its ordinary initialisation.
    """

    def __init__(self, cin: int, cout: int, emb_dim: int, *, groups: int, dropout: float = 0.0, gated: bool = False):
        super().__init__()
        self.gated = gated
        # None by default; set only through lessonlib.nets.perturb.skipped_blocks: the residual branch dropped with
        # this probability (1.0: left out, the block is its skip path), the "bad" model of layer-skip autoguidance
        self.dropped: float | None = None
        self.norm1, self.conv1 = nn.GroupNorm(groups, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb_dim, (3 if gated else 2) * cout)
        self.norm2, self.drop = nn.GroupNorm(groups, cout), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        zero_init(self.film if gated else self.conv2)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.dropped == 1.0:
            return self.skip(x)
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift, *gate = self.film(F.silu(emb)).chunk(3 if self.gated else 2, dim=1)
        h = self.conv2(self.drop(F.silu(modulate(self.norm2(h), scale, shift))))
        h = gate[0][:, :, None, None] * h if self.gated else h
        if self.dropped is not None:
            h = F.dropout(h, p=self.dropped, training=True)
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over the H*W positions, residual, output projection zero-initialised.

    ``perturbation`` (None by default; set only through :func:`lessonlib.nets.perturb.perturbed`) makes the layer
    the "bad" branch of a perturbation guider: ``("identity",)`` attends each position to itself only (PAG),
    ``("blur", sigma)`` blurs the queries over the H x W grid (SEG), ``("skip",)`` leaves the layer out (SLG).
    """

    def __init__(self, ch: int, *, groups: int):
        super().__init__()
        self.norm, self.qkv, self.out = nn.GroupNorm(groups, ch), nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)
        zero_init(self.out)
        self.perturbation: tuple | None = None

    def forward(self, x: Tensor) -> Tensor:
        kind = self.perturbation[0] if self.perturbation else None
        if kind == "skip":
            return x
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        if kind == "identity":  # softmax(Q K^T) replaced by the identity matrix: every position keeps its own value
            y = v
        else:
            if kind == "blur":
                q = blur_positions(q, h, w, self.perturbation[1])
            y = F.scaled_dot_product_attention(q, k, v)  # (B, HW, C)
        return x + self.out(y.transpose(-1, -2).reshape(b, c, h, w))


def blur_positions(q: Tensor, h: int, w: int, sigma: float) -> Tensor:
    """(B, H*W, C) features blurred over the H x W grid by a Gaussian of std ``sigma`` positions (reflected at the
    edges); ``sigma=inf`` gives every position the mean (SEG's infinite blur, a uniform attention)."""
    if sigma == float("inf"):
        return q.mean(1, keepdim=True).expand_as(q)
    radius = max(1, min(int(3 * sigma + 0.5), h - 1, w - 1))
    offsets = torch.arange(-radius, radius + 1, dtype=q.dtype, device=q.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    b, _, c = q.shape
    grid = q.transpose(1, 2).reshape(b * c, 1, h, w)
    grid = F.conv2d(F.pad(grid, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    grid = F.conv2d(F.pad(grid, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return grid.reshape(b, c, h * w).transpose(1, 2)


class CrossAttention(nn.Module):
    """Image positions attend to text tokens: softmax(Q K^T / sqrt(C)) V with Q from GN(h), K, V from LN(tokens).

    Single head, residual, output projection zero-initialised; padding tokens are masked out. With
    ``record = True`` the last attention map (B, H*W, L) is kept in ``self.attention`` (lesson 08).
    """

    def __init__(self, ch: int, context_dim: int, *, groups: int):
        super().__init__()
        self.norm, self.q = nn.GroupNorm(groups, ch), nn.Conv2d(ch, ch, 1)
        self.ctx_norm, self.kv = nn.LayerNorm(context_dim), nn.Linear(context_dim, 2 * ch)
        self.out = nn.Conv2d(ch, ch, 1)
        zero_init(self.out)
        self.record, self.attention = False, None

    def forward(self, x: Tensor, tokens: Tensor, mask: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q = self.q(self.norm(x)).reshape(b, c, h * w).transpose(1, 2)  # (B, HW, C)
        k, v = self.kv(self.ctx_norm(tokens)).chunk(2, dim=-1)  # (B, L, C) each
        logits = (q @ k.transpose(1, 2)) / c**0.5
        probs = logits.masked_fill(~mask[:, None, :], float("-inf")).softmax(-1)
        if self.record:
            self.attention = probs.detach()
        return x + self.out((probs @ v).transpose(1, 2).reshape(b, c, h, w))


class UNet(nn.Module):
    """Small U-Net eps-model: ``forward(x_t, t, cond=None) -> eps_hat`` (lesson 02)."""

    def __init__(self, config: UNetConfig | None = None, **overrides):
        super().__init__()
        cfg = resolve_config(UNetConfig, config, overrides)
        self.config = cfg
        # the schedule that converts v to eps (prediction="v"); rebuilt from the config, not saved
        self.v_schedule = make_schedule(cfg.schedule, cfg.T) if cfg.prediction == "v" else None
        C, g = cfg.base_channels, cfg.groups
        emb_dim = 4 * C
        self.time_mlp = TimeMLP(C, emb_dim)
        concat = cfg.class_injection == "concat"
        self.class_emb = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes and not concat else None
        self.class_maps = nn.Embedding(cfg.num_classes + 1, CONCAT_CHANNELS) if concat else None
        if cfg.cond_dim:
            self.vec_proj = nn.Linear(cfg.cond_dim, emb_dim)
            self.null_vec = nn.Parameter(torch.zeros(cfg.cond_dim))
        if cfg.context_dim:
            self.null_token = nn.Parameter(torch.zeros(cfg.context_dim))
        if cfg.scale_range:  # the guidance scale, embedded like t (100 s), zero at initialisation
            self.scale_mlp = TimeMLP(C, emb_dim)
            zero_init(self.scale_mlp[-1])
        gated = cfg.class_injection == "adaln_zero"
        block = lambda cin, cout: ResBlock(cin, cout, emb_dim, groups=g, dropout=cfg.dropout, gated=gated)  # noqa: E731

        pixels = cfg.in_channels * cfg.patch_size**2
        self.inp = nn.Conv2d(pixels + (CONCAT_CHANNELS if concat else 0), C, 3, padding=1)
        self.down, skips, ch, res = nn.ModuleList(), [C], C, cfg.image_size // cfg.patch_size
        for level, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.num_res_blocks):
                self.down.append(self._stage(block(ch, C * mult), C * mult, res))
                ch = C * mult
                skips.append(ch)
            if level < len(cfg.channel_mults) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
                res //= 2
        cross = [CrossAttention(ch, cfg.context_dim, groups=g)] if cfg.context_dim else []
        self.mid = nn.ModuleList([block(ch, ch), SelfAttention(ch, groups=g), *cross, block(ch, ch)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mults))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(self._stage(block(ch + skips.pop(), C * mult), C * mult, res))
                ch = C * mult
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)))
                res *= 2
        self.out = nn.Sequential(nn.GroupNorm(g, ch), nn.SiLU(), nn.Conv2d(ch, pixels, 3, padding=1))
        zero_init(self.out[-1])

    def _stage(self, res_block: ResBlock, ch: int, res: int) -> nn.ModuleList:
        cfg = self.config
        attn = []
        if res in cfg.attention_resolutions:
            attn.append(SelfAttention(ch, groups=cfg.groups))
            if cfg.context_dim:
                attn.append(CrossAttention(ch, cfg.context_dim, groups=cfg.groups))
        return nn.ModuleList([res_block, *attn])

    # ---- conditioning ----
    def embed(self, t: Tensor, cond=None) -> Tensor:
        """Time embedding plus the condition's embedding, (B, 4 * base_channels)."""
        emb = self.time_mlp(t)
        parts = cond if isinstance(cond, dict) else {"class": cond}
        unknown = set(parts) - {"class", "vec", "null", "tokens", "mask", "scale"}
        if unknown:
            raise ValueError(f"unknown condition keys {sorted(unknown)}; use 'class', 'vec', 'null', 'tokens', 'mask', "
                             "'scale'.")
        if self.config.scale_range:
            emb = emb + self.scale_mlp(100.0 * self._scale(parts.get("scale"), t.shape[0], t.device))
        elif parts.get("scale") is not None:
            raise ValueError("this U-Net takes no guidance scale (scale_range=None); only a distilled student does.")
        if self.class_emb is not None:
            emb = emb + self.class_emb(self._class_index(parts.get("class"), t.shape[0], t.device))
        elif self.class_maps is not None:
            self._class_index(parts.get("class"), t.shape[0], t.device)  # checks the labels; used in encode()
        elif parts.get("class") is not None:
            raise ValueError("this U-Net has no class conditioning (num_classes=None) but was given class labels.")
        if self.config.cond_dim:
            emb = emb + self.vec_proj(self._vector(parts.get("vec"), parts.get("null"), t.shape[0]))
        elif parts.get("vec") is not None:
            raise ValueError("this U-Net has no vector conditioning (cond_dim=None) but was given 'vec'.")
        if parts.get("tokens") is not None and not self.config.context_dim:
            raise ValueError("this U-Net has no cross-attention (context_dim=None) but was given 'tokens'.")
        return emb

    def context(self, cond, batch: int, device) -> tuple[Tensor, Tensor] | None:
        """(tokens, mask) for cross-attention; null rows (or no tokens) read the single learned null token."""
        if not self.config.context_dim:
            return None
        parts = cond if isinstance(cond, dict) else {}
        tokens, mask, null = parts.get("tokens"), parts.get("mask"), parts.get("null")
        d = self.config.context_dim
        if tokens is None:
            return self.null_token.expand(batch, 1, d), torch.ones(batch, 1, dtype=torch.bool, device=device)
        if tokens.ndim != 3 or tokens.shape[0] != batch or tokens.shape[2] != d:
            raise ValueError(f"'tokens' must have shape ({batch}, L, {d}), got {tuple(tokens.shape)}.")
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=device) if mask is None else mask.bool()
        if mask.shape != tokens.shape[:2] or not mask.any(1).all():
            raise ValueError("'mask' must be (B, L) with at least one True (real) token per row.")
        if null is not None:
            null = null.reshape(-1, 1).to(device)
            first = torch.zeros_like(mask)
            first[:, 0] = True
            tokens = torch.where(null[..., None], self.null_token.expand_as(tokens), tokens)
            mask = torch.where(null, first, mask)
        return tokens, mask

    def _time(self, t: Tensor) -> Tensor:
        """Velocity models embed t in [0, 1] as 999 t, the eps-models' range of timesteps."""
        if self.config.prediction != "velocity":
            return t
        t = torch.as_tensor(t)
        if not t.dtype.is_floating_point:
            raise ValueError("this U-Net predicts a flow-matching velocity and takes float times t in [0, 1]; it was "
                             "given integer timesteps, as a DDIM/DDPM sampler does. Sample it with method='euler' or "
                             "'heun' and schedule=flow.LINEAR (zoo.schedule_for gives it).")
        if t.numel() and (float(t.min()) < 0 or float(t.max()) > 1):
            raise ValueError(f"flow times must lie in [0, 1], got {float(t.min()):g} to {float(t.max()):g}.")
        return 999.0 * t

    def _scale(self, s, batch: int, device) -> Tensor:
        lo, hi = self.config.scale_range
        if s is None:
            raise ValueError(f"this U-Net is a guidance-distilled student: give cond={{'class': y, 'scale': s}} with s "
                             f"in [{lo:g}, {hi:g}].")
        s = torch.as_tensor(s, dtype=torch.float32, device=device).reshape(-1).expand(batch)
        if not bool(torch.all((s >= lo) & (s <= hi))):  # NaN fails this too
            raise ValueError(f"this student was distilled for guidance scales in [{lo:g}, {hi:g}], got "
                             f"{s.unique().tolist()[:5]}; outside that range it was never trained.")
        return s

    def _class_index(self, y, batch: int, device) -> Tensor:
        n = self.config.num_classes
        if y is None:
            return torch.full((batch,), n, dtype=torch.long, device=device)
        y = torch.as_tensor(y, device=device)
        if y.dtype.is_floating_point or y.ndim != 1 or y.shape[0] != batch:
            raise ValueError(f"class labels must be integers of shape ({batch},), got {y.dtype} {tuple(y.shape)}.")
        if torch.any(((y < 0) & (y != NULL_CLASS)) | (y >= n)):
            raise ValueError(f"class labels must lie in 0..{n - 1}, or NULL_CLASS = {NULL_CLASS} for the null class; "
                             f"got {y.unique().tolist()}.")
        return torch.where(y == NULL_CLASS, torch.full_like(y, n), y).long()

    def _vector(self, vec, null, batch: int) -> Tensor:
        null_vec = self.null_vec.expand(batch, -1)
        if vec is None:
            return null_vec
        if vec.shape != (batch, self.config.cond_dim):
            raise ValueError(f"'vec' must have shape ({batch}, {self.config.cond_dim}), got {tuple(vec.shape)}.")
        return vec if null is None else torch.where(null.reshape(-1, 1).to(vec.device), null_vec, vec)

    # ---- forward ----
    @follows_inputs
    def forward(self, x: Tensor, t: Tensor, cond=None, *, residuals: list[Tensor] | None = None) -> Tensor:
        """eps_hat; ``residuals`` (one per skip feature, then one for the middle) are added first (ControlNet)."""
        h, hs, emb, ctx = self.encode(x, t, cond)
        if residuals is not None:
            if len(residuals) != len(hs) + 1:
                raise ValueError(f"give {len(hs) + 1} residuals (one per skip feature and the middle), got {len(residuals)}.")
            hs, h = [a + r for a, r in zip(hs, residuals)], h + residuals[-1]
        out = self.decode(h, hs, emb, ctx)
        if self.config.prediction != "v":
            return out
        try:
            abar = self.v_schedule.at("abar", t, x)  # validates t: integers in 0..T-1
        except ValueError as err:
            raise ValueError(f"this U-Net predicts v and converts it to eps at integer timesteps "
                             f"0..{self.config.T - 1}: {err}") from err
        # v = sqrt(abar) eps - sqrt(1 - abar) x0 gives eps = sqrt(1 - abar) x_t + sqrt(abar) v: returning eps keeps the
        # model an eps-function for every sampler and guidance method
        return (1 - abar).sqrt() * x + abar.sqrt() * out

    def encode(self, x: Tensor, t: Tensor, cond=None, *, added: Tensor | None = None):
        """The encoder half: (middle features, skip features, embedding, context); ``added`` joins after the stem."""
        cfg = self.config
        if x.ndim != 4 or x.shape[1:] != (cfg.in_channels, cfg.image_size, cfg.image_size):
            raise ValueError(f"this U-Net takes images of shape (B, {cfg.in_channels}, {cfg.image_size}, "
                             f"{cfg.image_size}), got {tuple(x.shape)}.")
        emb = self.embed(self._time(t).reshape(-1).expand(x.shape[0]), cond)
        ctx = self.context(cond, x.shape[0], x.device)
        h = F.pixel_unshuffle(x, cfg.patch_size) if cfg.patch_size > 1 else x
        if self.class_maps is not None:
            labels = cond.get("class") if isinstance(cond, dict) else cond
            maps = self.class_maps(self._class_index(labels, x.shape[0], x.device))
            h = torch.cat([h, maps[:, :, None, None].expand(-1, -1, *h.shape[-2:])], 1)
        h = self.inp(h)
        if added is not None:
            h = h + added
        hs = [h]
        for layer in self.down:
            h = self._run(layer, h, emb, ctx)
            hs.append(h)
        h = self._run(self.mid[:-1], h, emb, ctx)
        return self.mid[-1](h, emb), hs, emb, ctx

    def decode(self, h: Tensor, hs: list[Tensor], emb: Tensor, ctx=None) -> Tensor:
        """The decoder half: consumes the skip features (a copy of the list) and returns the network's output (eps_hat,
        or v for prediction="v", which ``forward`` converts)."""
        hs = list(hs)
        for layer in self.up:
            h = self._run(layer, torch.cat([h, hs.pop()], 1), emb, ctx) if isinstance(layer, nn.ModuleList) else layer(h)
        h = self.out(h)
        return F.pixel_shuffle(h, self.config.patch_size) if self.config.patch_size > 1 else h

    def skip_channels(self) -> list[int]:
        """Channels of each skip feature ``encode`` returns, then of the middle (the ControlNet's zero convolutions)."""
        chans = [self.inp.out_channels]
        for layer in self.down:
            chans.append(layer[0].conv2.out_channels if isinstance(layer, nn.ModuleList) else layer.out_channels)
        return chans + [self.mid[-1].conv2.out_channels]

    @staticmethod
    def _run(layer, h: Tensor, emb: Tensor, ctx=None) -> Tensor:
        if not isinstance(layer, nn.ModuleList):
            return layer(h)  # a down/up-sampling convolution
        h = layer[0](h, emb)
        for attn in layer[1:]:
            h = attn(h, *ctx) if isinstance(attn, CrossAttention) else attn(h)
        return h


@torch.no_grad()
def describe_unet(unet: UNet, x: Tensor, t: Tensor, cond=None) -> str:
    """One forward pass traced layer by layer: what each layer does and the feature shapes (lessons 02, 07).

    Rows follow the order of computation; decoder rows say how many channels came through a skip
    connection (concatenated with the features from below). The header says where time and the
    condition enter.
    """
    if not isinstance(unet, UNet):
        raise ValueError(f"describe_unet takes a lessonlib UNet, got {type(unet).__name__}.")
    cfg, rows, hooks = unet.config, [], []
    injection = {"film": "scale and shift (FiLM)", "adaln_zero": "scale, shift and a zero-initialised gate (adaLN-Zero)",
                 "concat": "scale and shift (FiLM); the class also enters as extra input channels"}[cfg.class_injection]

    def kind(name: str, m: nn.Module) -> str:
        if isinstance(m, ResBlock):
            return "ResBlock: 2 convs, emb in between, + input"
        if isinstance(m, SelfAttention):
            return "self-attention over positions"
        if isinstance(m, CrossAttention):
            return "cross-attention to the text tokens"
        if name == "inp":
            return f"stem: {cfg.patch_size}x{cfg.patch_size} patches, 3x3 conv" if cfg.patch_size > 1 else "stem: 3x3 conv"
        if name == "out":
            return "head: norm, SiLU, 3x3 conv" + (", back to pixels" if cfg.patch_size > 1 else "")
        return "downsample: conv, stride 2" if isinstance(m, nn.Conv2d) else "upsample: x2, conv"

    def watch(name: str, m: nn.Module):
        def hook(module, args, out):
            rows.append((name, kind(name, module), tuple(args[0].shape[1:]), tuple(out.shape[1:])))
        hooks.append(m.register_forward_hook(hook))

    for name, m in unet.named_modules():
        top = name.split(".")[0]
        samplers = top in ("down", "up") and name.count(".") == 1 and not isinstance(m, nn.ModuleList)
        if isinstance(m, (ResBlock, SelfAttention, CrossAttention)) or name in ("inp", "out") or samplers:
            watch(name, m)
    try:
        eps = unet(x, t, cond)
    finally:
        for h in hooks:
            h.remove()
    emb = 4 * cfg.base_channels
    lines = ["emb = time_mlp(t)" + (" + class_emb(y)" if unet.class_emb is not None else "")
             + (" + vec_proj(text)" if cfg.cond_dim else "") + f": one {emb}-d vector per image, fed to every ResBlock "
             f"as {injection}", f"input x_t {tuple(x.shape[1:])}"]
    previous = None
    for name, what, shape_in, shape_out in rows:
        note = ""
        if name.startswith("up.") and isinstance(previous, tuple) and shape_in[0] > previous[0] and "ResBlock" in what:
            note = f" {previous[0]} from below + {shape_in[0] - previous[0]} from a skip"
        lines.append(f"{name:9s} {what:42s} {str(shape_in):>13s} -> {str(shape_out):13s}{note}".rstrip())
        previous = shape_out
    lines.append(f"output eps_hat {tuple(eps.shape[1:])}: the same shape as x_t")
    return "\n".join(lines)
