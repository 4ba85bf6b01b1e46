import pytest
import torch

from lessonlib.captions import AttributeBins
from lessonlib.guidance import batched_cfg, batched_predictions, cfg, conditional
from lessonlib.nets.clip import SmallCLIP
from lessonlib.nets.conditions import null_condition, text_condition
from lessonlib.nets.unet import UNet, UNetConfig
from lessonlib.schedules import linear_schedule
from lessonlib.training import text_diffusion_loss_fn


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    clip = SmallCLIP().eval()
    clip.set_bins(AttributeBins(thickness=(1.8, 2.2), slant=(0.0, 0.2), size=(17.0,)))
    net = UNet(UNetConfig(patch_size=2, base_channels=8, channel_mults=(1, 2), groups=4, attention_resolutions=(7,),
                          cond_dim=clip.config.embed_dim, context_dim=clip.config.text_width)).eval()
    for p in net.parameters():
        p.data.normal_(0, 0.05)
    return clip, net


def test_scale_zero_and_one_give_the_unconditional_and_conditional_predictions_exactly(parts):
    clip, net = parts
    x, t = torch.randn(3, 1, 28, 28), torch.full((3,), 400)
    cond = text_condition(clip, ["a thick seven", "a thin one", "an 8"])
    with torch.no_grad():
        eps_u, eps_c = batched_predictions(net, [null_condition(cond), cond])(x, t)  # the same one forward call
        assert torch.equal(batched_cfg(net, cond, null_condition(cond), 0.0)(x, t), eps_u)
        assert torch.equal(batched_cfg(net, cond, null_condition(cond), 1.0)(x, t), eps_c)
        assert not torch.allclose(eps_c, eps_u)
        # and the batched call agrees with two separate calls up to float rounding of the larger batch
        torch.testing.assert_close(eps_u, net(x, t, null_condition(cond)), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(eps_c, net(x, t, cond), atol=1e-6, rtol=1e-5)


def test_the_negative_prompt_replaces_the_unconditional_branch(parts):
    clip, net = parts
    x, t = torch.randn(2, 1, 28, 28), torch.full((2,), 300)
    pos, negative = text_condition(clip, "a seven"), text_condition(clip, "a thick seven")
    with torch.no_grad():
        got = batched_cfg(net, pos, negative, 3.0)(x, t)
        eps_pos, eps_neg = conditional(net, pos)(x, t), conditional(net, negative)(x, t)
        torch.testing.assert_close(got, eps_neg + 3.0 * (eps_pos - eps_neg))
        torch.testing.assert_close(got, cfg(conditional(net, pos), conditional(net, negative), 3.0)(x, t))


def test_caption_dropout_is_per_sample_at_the_requested_rate(parts):
    clip, _ = parts
    seen = []

    def spy(x, t, cond):
        seen.append(cond["null"].clone())
        return torch.zeros_like(x, requires_grad=True)

    images = torch.rand(64, 1, 28, 28) * 2 - 1
    loss = text_diffusion_loss_fn(images, torch.arange(64) % 10, linear_schedule(1000), clip=clip, batch_size=200,
                                  p_uncond=0.25, generator=torch.Generator().manual_seed(0))
    for step in range(10):
        loss(spy, step)
    dropped = torch.stack(seen).float()
    assert dropped.mean().item() == pytest.approx(0.25, abs=0.03)
    assert 0 < dropped[0].mean() < 1  # mixed within one batch: per sample, not per batch
    with pytest.raises(ValueError, match="p_uncond"):
        text_diffusion_loss_fn(images, torch.arange(64) % 10, linear_schedule(1000), clip=clip, batch_size=8,
                               p_uncond=1.5, generator=torch.Generator())


def test_text_conditions_check_their_prompts_and_tokens_match_encode_text(parts):
    clip, _ = parts
    with pytest.raises(ValueError, match="non-empty"):
        text_condition(clip, "")
    cond = text_condition(clip, ["a thick seven", "my 3"])
    torch.testing.assert_close(cond["vec"], clip.encode_text(["a thick seven", "my 3"]).detach())
    assert cond["mask"].sum(1).tolist() == [5, 4]  # start, words, end
    assert cond["tokens"].shape == (2, clip.context_length, clip.config.text_width)


def test_a_pooled_only_condition_keeps_the_vector_and_a_unet_without_cross_attention_rejects_tokens(parts):
    clip, _ = parts
    full, pooled = text_condition(clip, ["a thick seven", "my 3"]), text_condition(clip, ["a thick seven", "my 3"], tokens=False)
    assert set(pooled) == {"vec", "null"} and torch.equal(pooled["vec"], full["vec"])
    net = UNet(UNetConfig(base_channels=8, channel_mults=(1, 2), groups=4, cond_dim=clip.config.embed_dim)).eval()
    x, t = torch.randn(2, 1, 28, 28), torch.full((2,), 100)
    assert net(x, t, pooled).shape == x.shape
    with pytest.raises(ValueError, match="no cross-attention"):
        net(x, t, full)
