"""Lesson 10: class injection by concat / FiLM / AdaLN-zero, zero convolutions, ControlNet, layouts, costs."""
import pytest
import torch

from lessonlib.costs import attention_cost, film_flops, measured_flops
from lessonlib.diffusion import denoising_loss
from lessonlib.metrics import layout_iou
from lessonlib.nets.controlnet import ControlNet, zero_conv
from lessonlib.nets.unet import CrossAttention, ResBlock, SelfAttention, UNet, UNetConfig
from lessonlib.schedules import linear_schedule
from lessonlib.transforms import coarse_layout

SMALL = dict(patch_size=2, base_channels=16, channel_mults=(1, 2), num_classes=10)


def _randomise_output(net: UNet) -> UNet:
    torch.nn.init.normal_(net.out[-1].weight, std=0.1)  # the zero-initialised output would hide everything
    return net


@pytest.mark.parametrize("injection", ["film", "concat", "adaln_zero"])
def test_every_injection_reaches_the_output(injection):
    torch.manual_seed(0)
    net = _randomise_output(UNet(UNetConfig(**SMALL, class_injection=injection)))
    for block in net.modules():  # let every residual branch through (AdaLN-zero and FiLM start closed)
        if isinstance(block, ResBlock):
            torch.nn.init.normal_(block.film.weight, std=0.1)
            torch.nn.init.normal_(block.conv2.weight, std=0.1)
    x, t = torch.randn(4, 1, 28, 28), torch.full((4,), 300)
    a, b = net(x, t, torch.tensor([0, 1, 2, 3])), net(x, t, torch.tensor([4, 5, 6, 7]))
    assert (a - b).abs().amax(dim=(1, 2, 3)).min() > 1e-4
    assert torch.allclose(net(x, t, None), net(x, t, torch.full((4,), -1)))  # None is the null class


def test_adaln_zero_blocks_start_as_their_skip_path_and_still_learn():
    block = ResBlock(16, 32, 64, groups=8, gated=True)
    x, emb = torch.randn(2, 16, 7, 7), torch.randn(2, 64)
    assert torch.equal(block(x, emb), block.skip(x))
    block(x, emb).pow(2).sum().backward()
    assert block.film.weight.grad.abs().sum() > 0  # the gate's row of the modulation gets a gradient at once
    assert block.conv2.weight.abs().sum() > 0  # unlike FiLM, the last convolution is not zero-initialised


def test_film_checkpoint_keys_are_unchanged_and_bad_injections_raise():
    keys = set(UNet(UNetConfig(**SMALL)).state_dict())
    assert "class_emb.weight" in keys and not any(k.startswith("class_maps") for k in keys)
    assert "class_maps.weight" in UNet(UNetConfig(**SMALL, class_injection="concat")).state_dict()
    with pytest.raises(ValueError, match="class_injection must be one of"):
        UNetConfig(**SMALL, class_injection="crossattn")
    with pytest.raises(ValueError, match="needs num_classes"):
        UNetConfig(patch_size=2, channel_mults=(1, 2), class_injection="concat")
    with pytest.raises(ValueError, match="class labels must lie"):
        UNet(UNetConfig(**SMALL, class_injection="concat"))(torch.randn(1, 1, 28, 28), torch.tensor([5]), torch.tensor([10]))


def test_zero_convolution_outputs_zero_and_has_a_nonzero_weight_gradient():
    conv = zero_conv(8)
    x = torch.randn(3, 8, 5, 5)
    y = conv(x)
    assert torch.equal(y, torch.zeros_like(y))
    (y * torch.randn_like(y)).sum().backward()
    assert conv.weight.grad.abs().sum() > 0 and conv.bias.grad.abs().sum() > 0


def _controlnet():
    torch.manual_seed(0)
    return ControlNet.from_base(_randomise_output(UNet(UNetConfig(**SMALL))))


def test_controlnet_starts_as_the_base_and_trains_only_its_own_part():
    net = _controlnet()
    x, t, y = torch.rand(4, 1, 28, 28) * 2 - 1, torch.tensor([10, 200, 500, 900]), torch.tensor([1, 2, 3, -1])
    cond = {"class": y, "hint": coarse_layout(x)}
    assert torch.equal(net(x, t, cond), net.base(x, t, y))
    assert all(not p.requires_grad for p in net.base.parameters())
    denoising_loss(net, x, linear_schedule(1000), cond=cond).backward()
    grads = {name: p.grad for name, p in net.named_parameters() if p.requires_grad}
    assert all(grads[f"zero_convs.{i}.weight"].abs().sum() > 0 for i in range(len(net.zero_convs)))
    # behind zero convolutions the copy and the hint encoder get exactly zero gradient at the first step
    assert all(g is None or g.abs().sum() == 0 for n, g in grads.items() if n.startswith(("control.", "hint_")))
    torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1.0).step()
    assert not torch.allclose(net(x, t, cond), net.base(x, t, y))
    net.strength = 0.0
    assert torch.equal(net(x, t, cond), net.base(x, t, y))


def test_controlnet_errors_say_what_to_do():
    net = _controlnet()
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="coarse_layout"):
        net(x, t, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="'hint' must have shape"):
        net(x, t, {"class": torch.tensor([1, 2]), "hint": torch.zeros(2, 1, 7, 7)})
    with pytest.raises(ValueError, match="residuals"):
        net.base(x, t, None, residuals=[torch.zeros(1)])
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="strength must be"):
            net.strength = bad


def test_coarse_layout_and_layout_iou():
    x = -torch.ones(2, 1, 28, 28)
    x[0, :, :8, :8] = 1  # ink in the top-left 2x2 cells
    x[1, :, 20:, 20:] = 1  # ink in the bottom-right 2x2 cells
    layout = coarse_layout(x)
    assert layout.shape == x.shape and layout.min() >= 0 and layout.max() <= 1
    assert layout[0, 0, 0, 0] == 1 and layout[0, 0, -1, -1] == 0
    assert torch.equal(layout_iou(x, layout), torch.ones(2))
    assert torch.equal(layout_iou(x.flip(0), layout), torch.zeros(2))
    with pytest.raises(ValueError, match="divisible"):
        coarse_layout(torch.zeros(1, 1, 30, 30))
    with pytest.raises(ValueError, match="must match"):
        layout_iou(x, layout[:1])


@pytest.mark.parametrize("resolution", [7, 14])
def test_cost_formulas_match_flop_counter(resolution):
    c, b, tokens, d = 32, 2, 6, 16
    x = torch.randn(b, c, resolution, resolution)
    sa, ca = SelfAttention(c, groups=8), CrossAttention(c, d, groups=8)
    ctx, mask = torch.randn(b, tokens, d), torch.ones(b, tokens, dtype=torch.bool)
    assert measured_flops(lambda: sa(x)) == attention_cost("self", resolution=resolution, channels=c, batch=b).flops
    assert measured_flops(lambda: ca(x, ctx, mask)) == attention_cost(
        "cross", resolution=resolution, channels=c, batch=b, tokens=tokens, context_dim=d).flops
    film = ResBlock(c, c, 64, groups=8).film
    assert measured_flops(lambda: film(torch.randn(b, 64))) == film_flops(emb_dim=64, channels=c, batch=b)
