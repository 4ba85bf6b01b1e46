"""The modality gap and the ways across it (lesson 08), on constructed embeddings; reference agreement; vector
conditions for a U-Net without cross-attention."""
import pytest
import torch
import torch.nn.functional as F
from helpers import randomise

from lessonlib.captions import AttributeBins
from lessonlib.metrics import mean_interval, reference_agreement
from lessonlib.modality import fit_linear_prior, modality_gap, recentre
from lessonlib.nets.conditions import vector_condition
from lessonlib.nets.unet import UNet, UNetConfig


def _cloud(n=200, d=16, seed=0):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_identical_clouds_have_no_gap():
    a = _cloud()
    gap = modality_gap(a, a.clone(), torch.arange(200) % 5)
    assert gap.distance == pytest.approx(0, abs=1e-6) and gap.matched_cos == pytest.approx(1, abs=1e-6)
    assert gap.image_image_cos == pytest.approx(gap.text_text_cos, abs=1e-6)


def test_a_shifted_cloud_gives_the_shift():
    a, shift = _cloud(), torch.zeros(16)
    shift[3] = 0.7
    gap = modality_gap(a, a + shift)
    torch.testing.assert_close(gap.offset, -shift, atol=1e-5, rtol=0)
    assert gap.distance == pytest.approx(0.7, abs=1e-5) and gap.matched_cos < 1


def test_recentring_removes_a_pure_shift_up_to_normalisation():
    text = _cloud(seed=1)
    shift = 0.5 * F.normalize(torch.ones(16), dim=0)
    image = text + shift
    back = recentre(image, modality_gap(image, text))
    torch.testing.assert_close(back, text, atol=1e-5, rtol=0)


def test_the_linear_prior_recovers_a_linear_map_and_generalises():
    image = _cloud(400, seed=2)
    rot = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(3)))[0]
    prior = fit_linear_prior(image[:300], image[:300] @ rot, ridge=0)
    held = prior(image[300:])
    assert prior.train_cos > 0.999 and (held * (image[300:] @ rot)).sum(-1).mean() > 0.999
    wrong = fit_linear_prior(image[:300], _cloud(300, seed=4), ridge=0)  # unrelated captions: nothing to learn
    assert (wrong(image[300:]) * _cloud(100, seed=5)).sum(-1).mean().abs() < 0.2


def test_bad_embeddings_say_what_is_wrong():
    with pytest.raises(ValueError, match="share one space"):
        modality_gap(_cloud(d=16), _cloud(d=8))
    with pytest.raises(ValueError, match="one caption per image"):
        modality_gap(_cloud(10), _cloud(12))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        modality_gap(torch.zeros(5), _cloud(5))
    prior = fit_linear_prior(_cloud(50), _cloud(50, seed=1))
    with pytest.raises(ValueError, match=r"\(N, 16\)"):
        prior(torch.zeros(3, 8))
    with pytest.raises(ValueError, match="one embedding per row"):
        vector_condition(torch.zeros(3, 8, 1))


def test_a_pooled_only_unet_takes_a_vector_condition_and_rejects_a_wrong_width():
    net = randomise(UNet(UNetConfig(base_channels=8, channel_mults=(1, 2), groups=4, cond_dim=16)))
    x, t = torch.randn(3, 1, 28, 28), torch.full((3,), 10)
    a, b = net(x, t, vector_condition(_cloud(3))), net(x, t, vector_condition(_cloud(3, seed=9)))
    assert a.shape == x.shape and not torch.allclose(a, b)  # the embedding reaches the output
    with pytest.raises(ValueError, match=r"'vec' must have shape \(3, 16\)"):
        net(x, t, vector_condition(torch.zeros(3, 8)))


class _FixedJudge(torch.nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.classes = classes

    def forward(self, x):
        return F.one_hot(self.classes[: len(x)], 10).float() + 0 * self.w


def test_reference_agreement_scores_what_a_sample_shares_with_its_reference():
    ref = -torch.ones(4, 1, 28, 28)
    ref[:, :, 6:22, 12:16] = 1  # a vertical bar
    moved = torch.roll(ref, shifts=8, dims=3)  # same stroke, other place
    bins = AttributeBins(thickness=(1.0, 2.0), slant=(-0.1, 0.1), size=(10.0,))
    judge = _FixedJudge(torch.tensor([1, 1, 2, 2]))
    same = reference_agreement(ref.clone(), ref, torch.tensor([1, 1, 1, 1]), judge, bins)
    assert same["class"].tolist() == [1, 1, 0, 0] and same["ink"].tolist() == [1, 1, 1, 1]
    assert same["layout"].eq(1).all() and same["thickness"].eq(1).all() and same["slant"].eq(1).all()
    shifted = reference_agreement(moved, ref, torch.tensor([1, 1, 1, 1]), judge, bins)
    assert shifted["ink"].eq(0).all() and shifted["layout"].lt(0.5).all()
    assert shifted["thickness"].eq(1).all() and shifted["slant"].eq(1).all()  # stroke style survives a move
    with pytest.raises(ValueError, match="one shape"):
        reference_agreement(ref[:, :, :14], ref, [1] * 4, judge, bins)


def test_mean_interval_is_a_normal_interval():
    mean, half = mean_interval(torch.tensor([0.0, 1.0] * 50))
    assert mean == pytest.approx(0.5) and half == pytest.approx(1.96 * 0.5025 / 10, rel=1e-3)
    with pytest.raises(ValueError, match="at least 2"):
        mean_interval([1.0])
