import pytest
import torch
from helpers import randomise

from lessonlib.nets.unet import ResBlock, UNet, UNetConfig, describe_unet
from lessonlib.samplers import sample
from lessonlib.schedules import linear_schedule

TINY = dict(base_channels=8, channel_mults=(1, 2), groups=4)


@pytest.mark.parametrize("patch", [1, 2])
def test_shapes_and_zero_output_at_initialisation(patch):
    net = UNet(UNetConfig(patch_size=patch, attention_resolutions=(14 // patch,), **TINY))
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([0, 500, 999])
    out = net(x, t)
    assert out.shape == x.shape and torch.all(out == 0)  # zero-initialised output convolution


def test_class_conditioning_and_the_null_class():
    torch.manual_seed(0)
    net = UNet(UNetConfig(num_classes=10, **TINY))
    for p in net.parameters():  # move away from the zero initialisation
        p.data.normal_(0, 0.05)
    x, t = torch.randn(4, 1, 28, 28), torch.full((4,), 300)
    null = net(x, t, torch.full((4,), -1))
    assert torch.equal(null, net(x, t)) and torch.equal(null, net(x, t, {"class": None}))
    assert not torch.allclose(net(x, t, torch.tensor([0, 1, 2, 3])), null)


def test_vector_conditioning_with_null_mask():
    torch.manual_seed(0)
    net = UNet(UNetConfig(cond_dim=6, **TINY))
    for p in net.parameters():
        p.data.normal_(0, 0.05)
    x, t, vec = torch.randn(2, 1, 28, 28), torch.full((2,), 10), torch.randn(2, 6)
    masked = net(x, t, {"vec": vec, "null": torch.tensor([True, False])})
    torch.testing.assert_close(masked[0], net(x, t)[0])
    torch.testing.assert_close(masked[1], net(x, t, {"vec": vec})[1])


@pytest.mark.parametrize("cond, msg", [
    (torch.tensor([0, 10]), "0..9"), (torch.tensor([0.5, 1.0]), "integers"), ({"tokens": torch.zeros(2, 3, 4)}, "context_dim=None"),
    ({"colour": 1}, "unknown condition"),
])
def test_bad_conditions(cond, msg):
    net = UNet(UNetConfig(num_classes=10, **TINY))
    with pytest.raises(ValueError, match=msg):
        net(torch.randn(2, 1, 28, 28), torch.tensor([1, 2]), cond)


def test_bad_shapes_and_configs():
    net = UNet(UNetConfig(**TINY))
    with pytest.raises(ValueError, match="\\(B, 1, 28, 28\\)"):
        net(torch.randn(2, 3, 28, 28), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="class labels"):
        net(torch.randn(2, 1, 28, 28), torch.tensor([1, 2]), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="divisible"):
        UNetConfig(image_size=28, patch_size=2, channel_mults=(1, 2, 2))


def test_seeded_sampling_with_a_unet_is_reproducible():
    torch.manual_seed(0)
    net = UNet(UNetConfig(**TINY)).eval()
    for p in net.parameters():
        p.data.normal_(0, 0.05)
    s = linear_schedule(100)
    run = lambda seed: sample(lambda x, t: net(x, t), torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(seed)),
                              s, steps=5, method="ddpm", generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(3), run(3)) and not torch.equal(run(3), run(4))


def test_cross_attention_reads_tokens_ignores_padding_and_has_a_null_token():
    net = randomise(UNet(UNetConfig(context_dim=5, cond_dim=6, patch_size=2, attention_resolutions=(7,), **TINY))).train()
    x, t = torch.randn(2, 1, 28, 28), torch.full((2,), 200)
    tokens, vec = torch.randn(2, 4, 5), torch.randn(2, 6)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    out = net(x, t, {"tokens": tokens, "mask": mask, "vec": vec})
    changed = tokens.clone()
    changed[0, 2:] = 100.0  # padding of row 0: must not matter
    torch.testing.assert_close(net(x, t, {"tokens": changed, "mask": mask, "vec": vec})[0], out[0])
    changed[0, 1] = 3.0  # a real token of row 0: must matter
    assert not torch.allclose(net(x, t, {"tokens": changed, "mask": mask, "vec": vec})[0], out[0])
    null = net(x, t, {"tokens": tokens, "mask": mask, "vec": vec, "null": torch.tensor([True, False])})
    torch.testing.assert_close(null[0], net(x, t)[0])
    torch.testing.assert_close(null[1], out[1])
    n_cross = sum(isinstance(m, __import__("lessonlib").nets.unet.CrossAttention) for m in net.modules())
    assert n_cross == 4  # one per 7x7 stage (down 1, up 2) and one in the middle


def test_cross_attention_checks_token_shapes():
    net = UNet(UNetConfig(context_dim=5, **TINY))
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"\(2, L, 5\)"):
        net(x, t, {"tokens": torch.randn(2, 3, 4)})
    with pytest.raises(ValueError, match="at least one True"):
        net(x, t, {"tokens": torch.randn(2, 3, 5), "mask": torch.zeros(2, 3, dtype=torch.bool)})


def test_attention_cost_formulas_match_the_profiled_softmax_and_check_input():
    from lessonlib.costs import attention_cost, measured_softmax_bytes, unet_attention_costs

    net = UNet(UNetConfig(context_dim=5, patch_size=2, attention_resolutions=(7,), **TINY)).eval()
    x, t = torch.randn(3, 1, 28, 28), torch.full((3,), 5)
    cond = {"tokens": torch.randn(3, 6, 5)}
    rows = unet_attention_costs(net, x, t, cond)
    assert {c.kind for _, c in rows} == {"self", "cross"}
    for module, cost in rows:
        if cost.kind == "cross":
            h = torch.randn(3, cost.channels, 7, 7)
            got = measured_softmax_bytes(lambda: module(h, cond["tokens"], torch.ones(3, 6, dtype=torch.bool)))
            assert got == cost.matrix_bytes == 3 * 49 * 6 * 4
    big, small = attention_cost("self", resolution=64, channels=8), attention_cost("self", resolution=32, channels=8)
    assert big.matrix_bytes == 16 * small.matrix_bytes  # N^2 = resolution^4
    with pytest.raises(ValueError, match="tokens"):
        attention_cost("cross", resolution=7, channels=8)
    with pytest.raises(ValueError, match="kind"):
        attention_cost("axial", resolution=7, channels=8)


def test_a_config_and_overrides_together_are_refused():
    from lessonlib.nets.classifier import JudgeConfig, JudgeNet

    with pytest.raises(ValueError, match="not both"):
        UNet(UNetConfig(**TINY), num_classes=10)
    with pytest.raises(ValueError, match="not both"):
        JudgeNet(JudgeConfig(), width=8)
    assert UNet(base_channels=8, channel_mults=(1, 2), groups=4).config.base_channels == 8


def test_describe_unet_traces_every_layer_and_counts_skip_channels():
    net = UNet(base_channels=16, channel_mults=(1, 2), attention_resolutions=(7,), num_classes=10, patch_size=2)
    text = describe_unet(net, torch.randn(2, 1, 28, 28), torch.full((2,), 10), torch.tensor([1, 2]))
    rows = [line for line in text.splitlines() if line.split(" ")[0].split(".")[0] in ("inp", "down", "mid", "up", "out")]
    resblocks = sum(isinstance(m, ResBlock) for m in net.modules())
    assert sum("ResBlock" in r for r in rows) == resblocks
    assert rows[0].startswith("inp") and rows[-1].startswith("out") and "class_emb(y)" in text
    # every decoder ResBlock's input = the features from below + one skip, whose channels the encoder produced
    skips = [int(r.split(" from below + ")[1].split(" ")[0]) for r in rows if "from a skip" in r]
    assert sorted(skips) == sorted(net.skip_channels()[:-1])
    with pytest.raises(ValueError, match="lessonlib UNet"):
        describe_unet(torch.nn.Linear(2, 2), torch.randn(2, 2), torch.zeros(2))


def test_a_v_prediction_unet_is_an_eps_function():
    """prediction="v": the network's output is v = sqrt(abar) eps - sqrt(1 - abar) x0, and forward returns eps."""
    from lessonlib.diffusion import q_sample

    torch.manual_seed(0)
    net = randomise(UNet(UNetConfig(prediction="v", **TINY)))
    schedule = linear_schedule()
    x0, eps, t = torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28), torch.tensor([0, 10, 500, 999])
    x_t = q_sample(schedule, x0, t, eps)
    a = schedule.abar[t].float()[:, None, None, None]
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    net.decode = lambda *args: v  # a network that predicts the true v ...
    torch.testing.assert_close(net(x_t, t), eps, atol=1e-5, rtol=1e-4)  # ... is the true eps-function
    with pytest.raises(ValueError, match="integer timesteps 0..999"):
        net(x_t, t.float() / 1000)
    with pytest.raises(ValueError, match="unknown schedule"):
        UNetConfig(prediction="v", schedule="cosin")


def test_a_v_recipe_must_convert_with_its_own_schedule():
    from dataclasses import asdict, replace

    from lessonlib.recipes import RECIPES
    from lessonlib.train import with_overrides

    v = with_overrides(RECIPES["mnist-uncond-quick"], {"config.prediction": "v"})
    assert v.config["prediction"] == "v" and RECIPES["mnist-uncond-quick"].config["prediction"] == "eps"
    with pytest.raises(ValueError, match="config.schedule and config.T"):
        replace(v, schedule="cosine")
    assert asdict(replace(v, schedule="cosine", config={**v.config, "schedule": "cosine"}))["schedule"] == "cosine"
