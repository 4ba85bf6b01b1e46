"""Paired comparisons (lessonlib.stats, lessonlib.metrics): two arms measured on the same noise and labels."""
import pytest
import torch
from scipy import stats as sps

from lessonlib.metrics import fid_difference_interval
from lessonlib.stats import paired_difference, paired_proportion


def test_paired_difference_matches_scipys_paired_t_interval():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(40, generator=g, dtype=torch.float64)
    a, b = base + 0.3 + 0.2 * torch.randn(40, generator=g, dtype=torch.float64), base
    t = sps.t.ppf(0.975, len(a) - 1)
    ours = paired_difference(a, b, z=t)
    ref = sps.ttest_rel(a.numpy(), b.numpy()).confidence_interval(0.95)
    assert (ours.lo, ours.hi) == pytest.approx((ref.low, ref.high), rel=1e-9)


def test_pairing_separates_what_unpaired_intervals_cannot():
    g = torch.Generator().manual_seed(1)
    shared = 3 * torch.randn(100, generator=g, dtype=torch.float64)  # what both arms share (the noise)
    a, b = shared + 0.2 + 0.1 * torch.randn(100, generator=g), shared + 0.1 * torch.randn(100, generator=g)
    paired = paired_difference(a, b)
    unpaired_half = 1.96 * (a.var() / 100 + b.var() / 100).sqrt()
    assert paired.excludes_zero and paired.verdict("a", "b") == "a higher"
    assert float(unpaired_half) > abs(paired.diff)  # unpaired, the same data would say "not separable"
    assert not paired_difference(b, b + 1e-3 * torch.randn(100, generator=g)).excludes_zero
    with pytest.raises(ValueError, match="same count"):
        paired_difference(a, b[:-1])


def test_paired_proportion_counts_only_discordant_pairs():
    a = torch.tensor([1] * 50 + [1] * 30 + [0] * 5 + [0] * 15)  # 50 both hit, 30 only a, 5 only b, 15 neither
    b = torch.tensor([1] * 50 + [0] * 30 + [1] * 5 + [0] * 15)
    d = paired_proportion(a, b)
    assert d.diff == pytest.approx(0.25)
    se = (30 + 5 - 25 ** 2 / 100) ** 0.5 / 100
    assert (d.lo, d.hi) == pytest.approx((0.25 - 1.96 * se, 0.25 + 1.96 * se))
    assert d.excludes_zero and d.verdict("a", "b") == "a higher"
    # concordant pairs change the rates but not the evidence of a difference: the interval's width stays
    more = paired_proportion(torch.cat([a, torch.ones(100)]), torch.cat([b, torch.ones(100)]))
    assert more.diff == pytest.approx(0.125)
    same = paired_proportion(a, a)
    assert same.diff == 0 and same.lo == same.hi == 0 and same.verdict() == "not separable at N = 100"
    with pytest.raises(ValueError, match="0/1"):
        paired_proportion(torch.tensor([0, 2]), torch.tensor([0, 1]))


def test_paired_proportion_covers_the_true_difference_about_95_percent_of_the_time():
    g = torch.Generator().manual_seed(2)
    covered, trials, n = 0, 400, 200
    for _ in range(trials):
        u = torch.rand(n, generator=g)
        a, b = u < 0.8, u < 0.7  # correlated arms, true difference 0.1
        d = paired_proportion(a, b)
        covered += d.lo <= 0.1 <= d.hi
    assert 0.90 <= covered / trials <= 0.99


class _Pixels(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def features(self, x):
        return x.flatten(1) + 0 * self.w


def test_fid_difference_interval_is_paired_and_calls_only_real_differences():
    judge, g = _Pixels(), torch.Generator().manual_seed(3)
    noise = torch.randn(400, 1, 2, 2, generator=g)
    ref = torch.randn(400, 1, 2, 2, generator=g)
    a, b = noise, noise + 0.05 * torch.randn(400, 1, 2, 2, generator=g)  # two near-identical arms
    tie = fid_difference_interval(judge, a, b, ref)
    assert tie.lo <= tie.diff <= tie.hi and not tie.excludes_zero
    worse = fid_difference_interval(judge, noise * 1.5 + 0.5, noise, ref)  # a shifted and stretched arm
    assert worse.excludes_zero and worse.verdict("shifted", "plain", lower_is_better=True) == "plain better"
    flipped = fid_difference_interval(judge, noise, noise * 1.5 + 0.5, ref)
    assert flipped.diff == pytest.approx(-worse.diff)
    with pytest.raises(ValueError, match="same number"):
        fid_difference_interval(judge, a, b[:-1], ref)


def test_forest_fills_only_the_differences_this_n_can_call():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lessonlib.plotting import forest
    from lessonlib.stats import PairedDifference
    rows = [("called", PairedDifference(0.5, 0.2, 0.8, 100, "t")), ("tie", PairedDifference(0.1, -0.2, 0.4, 100, "t"))]
    fig, ax = plt.subplots()
    forest(ax, rows, xlabel="difference", better="left")
    markers = [line for line in ax.lines if line.get_marker() == "o"]
    assert [m.get_markerfacecolor() for m in markers] == ["k", "white"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["tie", "called"]  # first row on top
    assert "better" in ax.get_xlabel()
    with pytest.raises(ValueError, match="PairedDifference"):
        forest(ax, [("x", (0.1, 0.0, 0.2))], xlabel="d")
    with pytest.raises(ValueError, match="better"):
        forest(ax, rows, xlabel="d", better="up")
    plt.close(fig)


def test_weight_map_writes_each_cell_in_readable_ink_and_rejects_a_wrong_shape():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lessonlib.plotting import weight_map
    fig, ax = plt.subplots()
    weight_map(ax, [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], [0, 2], [0, 1, 5], row_label="w_a", col_label="w_b",
               title="t", fmt=".1f")
    texts = {t.get_text(): t.get_color() for t in ax.texts}
    assert sorted(texts) == ["0.0", "1.0", "2.0", "3.0", "4.0", "5.0"]
    assert texts["0.0"] == "w" and texts["5.0"] == "k", "white on viridis' dark end, black on its light end"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "5"]
    with pytest.raises(ValueError, match="2 x 3"):
        weight_map(ax, [[0.0, 1.0]], [0, 2], [0, 1, 5], row_label="a", col_label="b", title="t")
    plt.close(fig)


def test_fid_difference_from_features_is_the_same_bootstrap_on_kept_features():
    from lessonlib.metrics import fid_difference_from_features, judge_features

    judge, g = _Pixels(), torch.Generator().manual_seed(4)
    noise, ref = torch.randn(300, 1, 2, 2, generator=g), torch.randn(300, 1, 2, 2, generator=g)
    a, b = noise * 1.3 + 0.2, noise
    whole = fid_difference_interval(judge, a, b, ref)
    kept = fid_difference_from_features(*(judge_features(judge, x) for x in (a, b, ref)))
    assert (kept.diff, kept.lo, kept.hi) == pytest.approx((whole.diff, whole.lo, whole.hi))
    assert kept.excludes_zero and kept.diff > 0
    with pytest.raises(ValueError, match="same number"):
        fid_difference_from_features(torch.ones(5, 4), torch.ones(4, 4), torch.ones(9, 4))


def test_frontier_pairings_choose_the_points_a_lesson_compares():
    from lessonlib.frontier import PAIRINGS, paired_to

    def row(method, scale, adherence, fid):
        return {"method": method, "scale": scale, "adherence": adherence, "fid_judge": fid}

    rows = [row("CFG", 1.0, 0.90, 1.0), row("CFG", 2.0, 0.97, 1.5), row("CFG", 3.0, 1.00, 2.0),
            row("APG", 2.0, 0.96, 1.2), row("APG", 5.0, 0.99, 0.9), row("CFG++", 0.6, 0.999, 1.1)]
    # best points: CFG s = 2 (lowest FID_judge with adherence >= 0.95), APG s = 5, CFG++ 0.6
    assert PAIRINGS["best points"](rows) == [(1, 4), (1, 5), (4, 5)]
    # each method's best point against the CFG point of closest adherence (APG 0.99 -> CFG 1.00; CFG++ too)
    assert PAIRINGS["cfg twin"](rows) == [(4, 2), (5, 2)]
    assert PAIRINGS["same scale"](rows) == [(3, 1)]  # only APG s = 2 has a CFG point at its scale
    with pytest.raises(KeyError, match="frontier.PAIRINGS"):
        paired_to(rows[3], rows[0])
