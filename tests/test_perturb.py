"""Perturbed attention for PAG, SEG and SLG (lessonlib.nets.perturb, lessonlib.guiders.perturbation_guidance)."""
import math

import pytest
import torch
import torch.nn.functional as F

from lessonlib.guidance import batched_cfg
from lessonlib.guiders import cfg_rule, layer_skip_autoguidance, perturbation_guidance, perturbed_rule
from lessonlib.nets.perturb import attention_layers, perturbed, res_blocks, skipped_blocks
from lessonlib.nets.unet import SelfAttention, UNet, UNetConfig, blur_positions
from lessonlib.types import NULL_CLASS


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    cfg = UNetConfig(patch_size=2, base_channels=16, channel_mults=(1, 2), attention_resolutions=(7,), groups=4,
                     num_classes=10)
    model = UNet(cfg).eval()
    with torch.no_grad():  # zero-initialised layers (the output, each residual's last conv) start at zero; trained ones not
        for param in model.parameters():
            if param.ndim > 1 and not param.any():
                param.normal_(0, 0.1)
    return model


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 1, 28, 28, generator=g), torch.tensor([100, 500, 900]), torch.tensor([1, 4, 7])


def test_layers_are_named_in_the_order_of_computation(unet):
    names = list(attention_layers(unet))
    assert names[0].startswith("down.") and "mid" in names and names[-1].startswith("up.")
    assert names.index("mid") == sum(n.startswith("down.") for n in names)


def test_identity_attention_keeps_each_positions_own_value():
    torch.manual_seed(2)
    layer = SelfAttention(8, groups=2)
    torch.nn.init.normal_(layer.out.weight, std=0.3)
    x = torch.randn(2, 8, 5, 5)
    b, c, h, w = x.shape
    _, _, v = layer.qkv(layer.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
    by_hand = x + layer.out(v.transpose(-1, -2).reshape(b, c, h, w))
    layer.perturbation = ("identity",)
    torch.testing.assert_close(layer(x), by_hand)
    layer.perturbation = ("skip",)
    assert torch.equal(layer(x), x)
    layer.perturbation = None
    assert not torch.allclose(layer(x), by_hand)  # the real attention mixes positions


def test_blur_is_a_normalised_gaussian_and_its_limits_are_no_blur_and_the_mean():
    q = torch.randn(2, 36, 4)
    assert torch.allclose(blur_positions(q, 6, 6, 1e-3), q, atol=1e-6)  # sigma -> 0: unchanged
    flat = blur_positions(q, 6, 6, math.inf)
    torch.testing.assert_close(flat, q.mean(1, keepdim=True).expand_as(q))
    const = torch.full((1, 36, 2), 3.0)
    torch.testing.assert_close(blur_positions(const, 6, 6, 2.0), const)  # weights sum to one
    spike = torch.zeros(1, 81, 1)
    spike[0, 40] = 1.0  # the centre of a 9 x 9 grid, far enough from the edges that no reflection reaches it
    out = blur_positions(spike, 9, 9, 1.0).reshape(9, 9)
    taps = torch.exp(-0.5 * torch.arange(-3, 4.0) ** 2)  # radius 3 sigma
    ref = torch.zeros(9, 9)
    ref[1:8, 1:8] = torch.outer(taps, taps) / taps.sum() ** 2
    torch.testing.assert_close(out, ref)


def test_perturbed_changes_the_output_and_restores_the_model_even_after_an_error(unet):
    x, t, y = _inputs()
    with torch.no_grad():
        clean = unet(x, t, y)
        outs = {}
        for kind in ("identity", "blur", "skip"):
            with perturbed(unet, "all", kind, sigma=1.5):
                outs[kind] = unet(x, t, y)
        with pytest.raises(RuntimeError):
            with perturbed(unet, ["mid"], "identity"):
                raise RuntimeError("inside the block")
        after = unet(x, t, y)
    torch.testing.assert_close(after, clean)
    assert all(m.perturbation is None for m in attention_layers(unet).values())
    assert all((o - clean).abs().max() > 1e-3 for o in outs.values())
    assert len({round(float(o.sum()), 4) for o in outs.values()}) == 3  # three different perturbations
    with torch.no_grad(), perturbed(unet, [0], "identity"):  # one layer only differs from all layers
        one = unet(x, t, y)
    assert not torch.allclose(one, outs["identity"])


def test_bad_layers_kinds_and_sigmas_are_refused(unet):
    for layers, kind, sigma, match in [(["nowhere"], "identity", 1.0, "unknown self-attention layer"), ([99], "skip", 1.0, "out of range"),
                                       ([], "skip", 1.0, "at least one"), ("all", "dropout", 1.0, "kind must be"),
                                       ("all", "blur", 0.0, "sigma"), ("all", "blur", float("nan"), "sigma"),
                                       ([True], "skip", 1.0, "name or an index")]:
        with pytest.raises(ValueError, match=match):
            with perturbed(unet, layers, kind, sigma=sigma):
                pass
    with pytest.raises(ValueError, match="unknown self-attention layer"):
        perturbation_guidance(unet, torch.tensor([1]), NULL_CLASS, 3.0, 2.0, layers=["nowhere"])


def test_perturbation_guidance_is_the_perturbed_rule_and_plain_cfg_at_weight_one(unet):
    x, t, y = _inputs()
    null = torch.full_like(y, NULL_CLASS)
    with torch.no_grad():
        c, u = unet(x, t, y), unet(x, t, null)
        with perturbed(unet, ["mid"], "identity"):
            p = unet(x, t, y)
        pag = perturbation_guidance(unet, y, NULL_CLASS, 3.0, 2.5, layers=["mid"])(x, t)
        torch.testing.assert_close(pag, perturbed_rule(c, u, p, 3.0, 2.5), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(pag, c + 2.0 * (c - u) + 1.5 * (c - p), rtol=1e-4, atol=1e-5)
        plain = perturbation_guidance(unet, y, NULL_CLASS, 3.0, 1.0, kind="skip")(x, t)
        torch.testing.assert_close(plain, batched_cfg(unet, y, NULL_CLASS, 3.0)(x, t), rtol=1e-4, atol=1e-5)
        alone = perturbation_guidance(unet, y, NULL_CLASS, 1.0, 2.0, kind="blur", sigma=math.inf)(x, t)
        with perturbed(unet, "all", "blur", sigma=math.inf):
            p_blur = unet(x, t, y)
        torch.testing.assert_close(alone, p_blur + 2.0 * (c - p_blur), rtol=1e-4, atol=1e-5)
    assert F.mse_loss(pag, c) > 0


def test_a_skipped_block_is_its_skip_path_and_the_model_comes_back(unet):
    blocks = res_blocks(unet)
    assert list(blocks)[0].startswith("down.") and any(n.startswith("mid.") for n in blocks)
    name, block = next((n, b) for n, b in blocks.items() if not isinstance(b.skip, torch.nn.Identity))
    x, emb = torch.randn(2, block.conv1.in_channels, 7, 7), torch.randn(2, block.film.in_features)
    with torch.no_grad():
        whole = block(x, emb)
        with skipped_blocks(unet, [name]):
            assert torch.equal(block(x, emb), block.skip(x))  # the residual branch left out
        assert torch.equal(block(x, emb), whole)  # restored
        with skipped_blocks(unet, [name], dropout=0.5):
            torch.manual_seed(1)
            half = block(x, emb)
        assert not torch.allclose(half, whole) and not torch.allclose(half, block.skip(x))
    xt, t, y = torch.randn(2, 1, 28, 28), torch.tensor([500, 100]), torch.tensor([3, 7])
    with torch.no_grad():
        before = unet(xt, t, y)
        with pytest.raises(RuntimeError, match="inside"):
            with skipped_blocks(unet, "all"):
                raise RuntimeError("an error inside the block")
        assert torch.equal(unet(xt, t, y), before)
    for blocks_, dropout, match in [(["nowhere"], 1.0, "unknown residual block"), ([99], 1.0, "out of range"),
                                    ("all", 0.0, r"\(0, 1\]"), ("all", 1.5, r"\(0, 1\]")]:
        with pytest.raises(ValueError, match=match):
            with skipped_blocks(unet, blocks_, dropout=dropout):
                pass


def test_layer_skip_autoguidance_guides_away_from_the_damaged_network(unet):
    xt, t, y = torch.randn(2, 1, 28, 28), torch.tensor([500, 100]), torch.tensor([3, 7])
    fn = layer_skip_autoguidance(unet, y, 2.5, blocks=["mid.0"])
    with torch.no_grad():
        c = unet(xt, t, y)
        with skipped_blocks(unet, ["mid.0"]):
            bad = unet(xt, t, y)
        assert not torch.allclose(bad, c)
        assert torch.allclose(fn(xt, t), cfg_rule(c, bad, 2.5), atol=1e-6)  # bad + w (good - bad)
        assert torch.allclose(layer_skip_autoguidance(unet, y, 1.0, blocks=["mid.0"])(xt, t), c, atol=1e-6)
    with pytest.raises(ValueError, match="unknown residual block"):
        layer_skip_autoguidance(unet, y, 2.0, blocks=["nowhere"])
