import pytest
import torch

from lessonlib.nets.unet import UNet, UNetConfig
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
    (torch.tensor([0, 10]), "0..9"), (torch.tensor([0.5, 1.0]), "integers"), ({"tokens": torch.zeros(2, 3, 4)}, "lesson 08"),
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
