import pytest
import torch
from helpers import randomise

from lessonlib.guidance import classifier_grad, grad_guidance
from lessonlib.nets.classifier import NoisyClassifier, NoisyClassifierConfig
from lessonlib.nets.unet import UNet, UNetConfig
from lessonlib.samplers import ddim_step, sample
from lessonlib.schedules import linear_schedule

S = linear_schedule(1000)


CLF = randomise(NoisyClassifier(NoisyClassifierConfig(base_channels=8, groups=4)), std=0.1)
UNET = randomise(UNet(UNetConfig(base_channels=8, channel_mults=(1, 2), groups=4, attention_resolutions=())), std=0.1)
EPS = lambda x, t: UNET(x, t)  # noqa: E731


def test_classifier_grad_is_the_autograd_gradient_of_log_p():
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([10, 500, 900])
    g = classifier_grad(CLF, torch.tensor([1, 2, 3]))(x, t)
    xr = x.clone().requires_grad_()
    logp = CLF.log_prob(xr, t)[torch.arange(3), torch.tensor([1, 2, 3])].sum()
    (ref,) = torch.autograd.grad(logp, xr)
    torch.testing.assert_close(g, ref)
    with torch.no_grad():  # works inside the samplers' no-grad loop
        assert classifier_grad(CLF, 4)(x, t).abs().sum() > 0


def test_guided_step_increases_log_p_at_first_order():
    """The guided DDIM step differs from the unguided one by a move along +grad log p(y | x_t)."""
    g = torch.Generator().manual_seed(0)
    x, t, y = torch.randn(4, 1, 28, 28, generator=g), torch.full((4,), 600), 7
    grad = classifier_grad(CLF, y)
    with torch.no_grad():
        plain, _ = ddim_step(S, x, t, 550, EPS(x, t))
        guided, _ = ddim_step(S, x, t, 550, grad_guidance(EPS, S, grad, 2.0)(x, t))
    move = guided - plain
    assert torch.all((move * grad(x, t)).flatten(1).sum(1) > 0)
    logp = lambda z: CLF.log_prob(z, t)[:, y]  # noqa: E731
    with torch.no_grad():
        assert torch.all(logp(x + 1e-3 * move / move.norm()) > logp(x))


def test_scale_zero_reproduces_unguided_sampling_bitwise():
    x_T = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    run = lambda eps: sample(eps, x_T, S, steps=6, method="ddpm", generator=torch.Generator().manual_seed(2))  # noqa: E731
    assert torch.equal(run(grad_guidance(EPS, S, classifier_grad(CLF, 3), 0.0)), run(EPS))
    assert not torch.equal(run(grad_guidance(EPS, S, classifier_grad(CLF, 3), 5.0)), run(EPS))


@pytest.mark.parametrize("y", [10, -1, torch.tensor([0, 12]), 2.5, torch.tensor([[1]])])
def test_bad_classes(y):
    with pytest.raises(ValueError, match="class"):
        classifier_grad(CLF, y)


@pytest.mark.parametrize("scale", [float("nan"), float("-inf")])
def test_bad_scale(scale):
    with pytest.raises(ValueError, match="scale"):
        grad_guidance(EPS, S, classifier_grad(CLF, 1), scale)


def test_wrong_image_shape():
    with pytest.raises(ValueError, match="\\(B, 1, 28, 28\\)"):
        classifier_grad(CLF, 1)(torch.randn(2, 1, 32, 32), torch.tensor([1, 2]))
