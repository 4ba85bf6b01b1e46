import numpy as np
import pytest
import torch
from scipy import linalg
from torch import nn

from lessonlib.metrics import diversity, fid_floor, frechet_distance, judge_accuracy, manifold_scores


def test_frechet_distance_matches_the_scipy_formula():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 6, generator=g, dtype=torch.float64)
    b = torch.randn(400, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64) + 0.5
    s1, s2 = np.cov(a.numpy().T), np.cov(b.numpy().T)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum().item() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-8)
    assert frechet_distance(a, a + 2.0) == pytest.approx(6 * 4.0, rel=1e-6)  # a pure shift adds |d mu|^2


class Identity(nn.Module):
    """A fake judge whose features are the flattened image and whose class is the brightest pixel."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def features(self, x):
        return x.flatten(1)

    def forward(self, x):
        return x.flatten(1)


def test_judge_accuracy_diversity_and_floor():
    judge = Identity()
    x = -torch.ones(10, 1, 1, 10)
    for i in range(10):
        x[i, 0, 0, i] = 1
    assert judge_accuracy(judge, x, torch.arange(10)) == 1.0 and judge_accuracy(judge, x, 3) == pytest.approx(0.1)
    assert diversity(judge, x) == pytest.approx(8**0.5)  # one-hot pairs differ in two places by 2
    assert diversity(judge, x[:1].repeat(5, 1, 1, 1)) == 0
    real = torch.randn(400, 1, 1, 4, generator=torch.Generator().manual_seed(0))
    assert 0 < fid_floor(judge, real, 200) < 0.3
    with pytest.raises(ValueError, match="2 \\* n"):
        fid_floor(judge, real, 300)


def test_the_fid_interval_brackets_the_value_shrinks_with_n_and_separates_only_real_differences():
    from lessonlib.metrics import fid_judge_interval

    class Identity(torch.nn.Module):  # a "judge" whose features are the flattened pixels
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def features(self, x):
            return x.flatten(1) + 0 * self.w

    judge, g = Identity(), torch.Generator().manual_seed(0)
    real = lambda n, shift=0.0: torch.randn(n, 1, 2, 2, generator=g) + shift  # noqa: E731
    small, large = (fid_judge_interval(judge, real(n), real(n), n_boot=200) for n in (50, 2000))
    assert small.lo <= small.fid <= small.hi and large.lo <= large.fid <= large.hi
    assert large.hi - large.lo < (small.hi - small.lo) / 3                 # ~ 1/sqrt(N)
    same = fid_judge_interval(judge, real(300), real(300))
    moved = fid_judge_interval(judge, real(300, shift=1.0), real(300))
    assert moved.separated_from(same) and not same.separated_from(fid_judge_interval(judge, real(300), real(300)))
    assert same.compare(moved) == "first lower" and moved.compare(same) == "second lower"
    assert same.compare(fid_judge_interval(judge, real(300), real(300))) == "not distinguishable"
    assert f"{moved:.1f}".count("[") == 1 and len(f"{moved:>40.2f}") == 40 and f"{moved:>40.2f}".startswith(" ")
    with pytest.raises(ValueError, match="n_boot"):
        fid_judge_interval(judge, real(10), real(10), n_boot=2)
    with pytest.raises(ValueError, match="z > 0"):
        fid_judge_interval(judge, real(10), real(10), z=0)


def test_auc_interval_on_constructed_cases():
    from lessonlib.metrics import auc_interval

    assert auc_interval([2, 3, 4], [0, 1])[0] == 1.0 and auc_interval([0, 1], [2, 3, 4])[0] == 0.0
    assert auc_interval([1, 1], [1, 1])[0] == 0.5                                   # ties count half
    g = torch.Generator().manual_seed(0)
    same, half = auc_interval(torch.randn(400, generator=g), torch.randn(400, generator=g))
    assert abs(same - 0.5) < half < 0.1                                              # chance, inside its interval
    shifted, _ = auc_interval(torch.randn(400, generator=g) + 1, torch.randn(400, generator=g))
    assert shifted > 0.5 + 2 * half and abs(shifted - 0.760) < 0.06                 # d' = 1: Phi(1 / sqrt 2) = 0.760
    assert auc_interval(torch.randn(40, generator=g), torch.randn(40, generator=g))[1] > half   # fewer, wider
    with pytest.raises(ValueError, match="at least 2"):
        auc_interval([1.0], [0.0, 1.0])


def test_mean_ink_is_the_inked_share_and_checks_shapes():
    from lessonlib.metrics import mean_ink

    assert mean_ink(-torch.ones(2, 1, 4, 4)) == 0.0 and mean_ink(torch.ones(2, 1, 4, 4)) == 1.0
    half = -torch.ones(1, 1, 4, 4)
    half[..., :2] = 1
    assert mean_ink(half) == 0.5
    with pytest.raises(ValueError, match="N, C, H, W"):
        mean_ink(torch.zeros(4, 4))


def test_judge_accuracy_is_exact_at_thresholds():
    """95 hits of 100 must meet an adherence threshold of 0.95 (float32 would give 0.94999999)."""
    from lessonlib.metrics import judge_accuracy

    class Fixed(nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot(x.flatten(1)[:, 0].long(), 10).float()

    x = torch.zeros(100, 1, 2, 2)
    x[:95, 0, 0, 0] = 3.0
    assert judge_accuracy(Fixed(), x, 3) >= 0.95 and judge_accuracy(Fixed(), x, 3) == 0.95


def test_class_matched_references_remove_the_class_mix_from_fid():
    from lessonlib.data import ImageSet
    from lessonlib.metrics import fid_judge, matched_indices

    judge, g = Identity(), torch.Generator().manual_seed(1)
    # a real pool of two well-separated classes, 50/50; "samples" asked for 80% class 0 and 20% class 1
    pool_labels = torch.arange(2000) % 2
    pool = torch.randn(2000, 1, 1, 4, generator=g) + 6.0 * pool_labels.view(-1, 1, 1, 1)
    real = ImageSet(pool, pool_labels, "test", ["a", "b"])
    wanted = (torch.arange(200) % 5 == 0).long()
    samples = torch.randn(200, 1, 1, 4, generator=g) + 6.0 * wanted.view(-1, 1, 1, 1)
    ref = real.matched(wanted, seed=3)
    random_ref = pool[torch.randperm(2000, generator=g)[:200]]
    assert fid_judge(judge, samples, ref) < 0.5 < 5 < fid_judge(judge, samples, random_ref)
    rows = matched_indices(pool_labels, wanted, copies=2, seed=3)
    assert torch.equal(pool_labels[rows[0]], wanted) and torch.equal(pool_labels[rows[1]], wanted)
    assert not set(rows[0].tolist()) & set(rows[1].tolist())
    assert fid_floor(judge, pool, labels=pool_labels, matched_to=wanted) < 0.5
    assert fid_floor(judge, pool, 200) < 0.5 < 5 < fid_judge(judge, samples, random_ref)
    with pytest.raises(ValueError, match="class 1: need 1200"):
        matched_indices(pool_labels, torch.ones(600, dtype=torch.long), copies=2)
    with pytest.raises(ValueError, match="both labels="):
        fid_floor(judge, pool, 200, matched_to=wanted)
    with pytest.raises(ValueError, match="leave n out"):
        fid_floor(judge, pool, 100, labels=pool_labels, matched_to=wanted)


def test_manifold_scores_separate_fidelity_from_diversity_on_constructed_sets():
    g = torch.Generator().manual_seed(0)
    real, other = torch.randn(600, 8, generator=g), torch.randn(600, 8, generator=g)
    same = manifold_scores(real, real.clone())
    assert same.precision == same.recall == same.coverage == 1.0
    fresh = manifold_scores(real, other)  # another draw of the same distribution
    assert fresh.precision > 0.6 and fresh.recall > 0.6 and fresh.coverage > 0.8 and 0.7 < fresh.density < 1.3
    collapsed = manifold_scores(real, real[:1] + 0.05 * torch.randn(600, 8, generator=g))  # one mode, tight
    assert collapsed.precision > 0.9 and collapsed.recall < 0.1 and collapsed.coverage < 0.1
    sharpened = manifold_scores(real, 0.3 * other)  # crowding the data's densest region, as strong guidance does
    assert sharpened.precision > 0.95 and sharpened.density > 1.5 and sharpened.recall < 0.1
    shifted = manifold_scores(real, other + 4.0)
    assert max(shifted.precision, shifted.recall, shifted.coverage) < 0.05
    wide = manifold_scores(real, 3 * other)  # more spread than the data: fidelity falls, recall stays
    assert wide.precision < fresh.precision - 0.3 and wide.recall > 0.9
    assert f"{fresh}".startswith("P 0.") and "C " in f"{fresh:.2f}"
    with pytest.raises(ValueError, match="same D"):
        manifold_scores(real, other[:, :4])
    with pytest.raises(ValueError, match="k must be an integer"):
        manifold_scores(real[:5], other[:5], k=5)
