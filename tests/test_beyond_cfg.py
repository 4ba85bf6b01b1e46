"""Lesson 11's guidance methods: APG, CFG++ (and DDIM inversion), autoguidance, the tree toy."""
import math

import pytest
import torch
from helpers import loss_before_after, randomise

from lessonlib.guidance import batched_cfg, conditional
from lessonlib.metrics import proportion_interval
from lessonlib.samplers import sample
from lessonlib.schedules import linear_schedule
from lessonlib.toy import GaussianMixture2D
from lessonlib.variants import apg, autoguidance, cfgpp_scales, guided_ddim_invert, guided_ddim_sample

S = linear_schedule(1000)
TOY = GaussianMixture2D()
EXACT = TOY.model(S)  # (x, t, y) -> eps, class -1 is the null class


def _batch(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=torch.float64), torch.arange(n) % 3, torch.full((n,), -1)


def test_apg_is_cfg_at_its_neutral_setting_and_projects_caps_and_averages():
    x, y, null = _batch()
    t = torch.full((12,), 400)
    plain = batched_cfg(EXACT, y, null, 4.0)(x, t)
    assert torch.equal(apg(EXACT, y, null, 4.0, schedule=S, eta=1.0)(x, t), plain)
    u, c = EXACT(x, t, null), EXACT(x, t, y)
    orth = apg(EXACT, y, null, 4.0, schedule=S, eta=0.0, space="eps")(x, t) - c  # = 3 d_perp
    torch.testing.assert_close((orth * c).sum(1), torch.zeros(12, dtype=torch.float64), atol=1e-10, rtol=0)
    assert float((orth - 3 * (c - u)).abs().max()) > 1e-3  # the parallel part was really removed
    capped = apg(EXACT, y, null, 4.0, schedule=S, eta=1.0, norm_threshold=0.05, space="eps")(x, t) - c
    assert float(capped.norm(dim=1).max()) <= 3 * 0.05 + 1e-9 < float((3 * (c - u)).norm(dim=1).max())


def test_apg_momentum_is_a_running_average_taken_before_the_cap():
    x, y, null = _batch()
    t1, t2 = torch.full((12,), 500), torch.full((12,), 400)
    d = [EXACT(x, t, y) - EXACT(x, t, null) for t in (t1, t2)]
    fn = apg(EXACT, y, null, 3.0, schedule=S, eta=1.0, momentum=-0.5, space="eps")
    fn(x, t1)
    torch.testing.assert_close(fn(x, t2), EXACT(x, t2, y) + 2 * (d[1] - 0.5 * d[0]))
    capped = apg(EXACT, y, null, 3.0, schedule=S, eta=1.0, momentum=-0.5, norm_threshold=0.01, space="eps")
    capped(x, t1)
    m = d[1] - 0.5 * d[0]
    want = EXACT(x, t2, y) + 2 * m * (0.01 / m.norm(dim=1, keepdim=True)).clamp(max=1)
    torch.testing.assert_close(capped(x, t2), want)
    x0 = apg(EXACT, y, null, 3.0, schedule=S, eta=1.0, norm_threshold=0.01)(x, t1)  # the default space: x0_hat
    from lessonlib.diffusion import eps_from_x0, x0_from_eps

    c0, u0 = (x0_from_eps(S, x, t1, EXACT(x, t1, k)) for k in (y, null))
    dd = c0 - u0
    torch.testing.assert_close(x0, eps_from_x0(S, x, t1, c0 + 2 * dd * (0.01 / dd.norm(dim=1, keepdim=True)).clamp(max=1)))


def test_apg_momentum_starts_afresh_for_every_sampling_run():
    x, y, null = _batch(64, seed=1)
    with_momentum = apg(EXACT, y, null, 3.0, schedule=S, momentum=-0.5)
    first = sample(with_momentum, x, S, steps=20, progress=False)
    again = sample(with_momentum, x, S, steps=20, progress=False)
    without = sample(apg(EXACT, y, null, 3.0, schedule=S, momentum=0.0), x, S, steps=20, progress=False)
    assert torch.equal(first, again) and float((first - without).abs().max()) > 1e-3


@pytest.mark.parametrize("kwargs, message", [
    (dict(eta=1.5), r"eta must lie in \[0, 1\]"),
    (dict(momentum=0.5), r"momentum must lie in \(-1, 0\]"),
    (dict(norm_threshold=0.0), "norm_threshold r must lie"),
    (dict(space="v"), "space must be"),
])
def test_apg_rejects_out_of_range_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        apg(EXACT, 0, -1, 3.0, schedule=S, **kwargs)


def test_guided_ddim_is_ddim_and_cfgpp_at_lambda_0_is_unconditional():
    x, y, null = _batch(200, seed=2)
    mine = guided_ddim_sample(EXACT, y, null, 3.0, x, S, steps=25, clip_x0=False)
    library = sample(batched_cfg(EXACT, y, null, 3.0), x, S, steps=25, progress=False)
    torch.testing.assert_close(mine, library, atol=1e-9, rtol=1e-9)
    plus0 = guided_ddim_sample(EXACT, y, null, 0.0, x, S, steps=25, plus_plus=True, clip_x0=False)
    assert torch.equal(plus0, guided_ddim_sample(EXACT, y, null, 0.0, x, S, steps=25, clip_x0=False))
    # one step: only x0_hat survives, so CFG++ at lambda is CFG at s = lambda; two steps, written out by hand:
    one = guided_ddim_sample(EXACT, y, null, 0.6, x, S, steps=1, plus_plus=True, clip_x0=False)
    torch.testing.assert_close(one, guided_ddim_sample(EXACT, y, null, 0.6, x, S, steps=1, clip_x0=False))
    two = guided_ddim_sample(EXACT, y, null, 0.6, x, S, steps=2, plus_plus=True, clip_x0=False)
    k0, k1 = 999, 0
    a0, a1 = float(S.abar[k0]), float(S.abar[k1])
    u, c = EXACT(x, torch.full((200,), k0), null), EXACT(x, torch.full((200,), k0), y)
    g = u + 0.6 * (c - u)
    x1 = a1 ** 0.5 * (x - (1 - a0) ** 0.5 * g) / a0 ** 0.5 + (1 - a1) ** 0.5 * u      # re-noised with eps_u
    u1, c1 = EXACT(x1, torch.full((200,), k1), null), EXACT(x1, torch.full((200,), k1), y)
    torch.testing.assert_close(two, (x1 - (1 - a1) ** 0.5 * (u1 + 0.6 * (c1 - u1))) / a1 ** 0.5)
    with pytest.raises(ValueError, match=r"lambda must lie in \[0, 1\]"):
        guided_ddim_sample(EXACT, y, null, 3.0, x, S, steps=25, plus_plus=True)


def test_cfgpp_is_cfg_with_a_per_step_scale_that_grows_with_the_number_of_steps():
    x, y, null = _batch(100, seed=7)
    for steps in (7, 25):
        w = cfgpp_scales(S, steps, 0.6)
        assert len(w) == steps and math.isclose(float(w[-1]), 0.6)  # the last step lands on x0_hat: w = lambda
        plus = guided_ddim_sample(EXACT, y, null, 0.6, x, S, steps=steps, plus_plus=True, clip_x0=False)
        torch.testing.assert_close(plus, guided_ddim_sample(EXACT, y, null, w, x, S, steps=steps, clip_x0=False))
        inv = guided_ddim_invert(EXACT, y, null, 0.6, plus, S, steps=steps, plus_plus=True)
        torch.testing.assert_close(inv, guided_ddim_invert(EXACT, y, null, w, plus, S, steps=steps))
    assert float(cfgpp_scales(S, 40, 0.6).max()) > 3 * float(cfgpp_scales(S, 10, 0.6).max())
    with pytest.raises(ValueError, match="one scale per step: 5 steps, got 4"):
        guided_ddim_sample(EXACT, y, null, [1.0, 2.0, 3.0, 4.0], x, S, steps=5)
    with pytest.raises(ValueError, match="lambda must lie"):
        cfgpp_scales(S, 10, 1.5)


def test_ddim_inversion_round_trips_better_with_more_steps():
    x0, y = TOY.sample(300, generator=torch.Generator().manual_seed(3))
    x0, null = x0.double(), torch.full((300,), -1)

    def round_trip(steps, scale=1.0, plus_plus=False):
        noise = guided_ddim_invert(EXACT, y, null, scale, x0, S, steps=steps, plus_plus=plus_plus)
        back = guided_ddim_sample(EXACT, y, null, scale, noise, S, steps=steps, plus_plus=plus_plus, clip_x0=False)
        return float((back - x0).norm(dim=1).mean())

    assert round_trip(200) < 0.5 * round_trip(10)
    assert round_trip(50, 0.6, True) < 0.8 * round_trip(10, 0.6, True)  # at 200 steps it diverges:
    # cfgpp_scales grow with the number of steps, so the same lambda guides ever harder


def test_autoguidance_is_the_good_model_at_w_1_and_checks_its_guide():
    x, y, _ = _batch()
    t = torch.full((12,), 300)
    bad = GaussianMixture2D(TOY.means * 0.8, TOY.covs, TOY.weights).model(S)
    assert torch.equal(autoguidance(EXACT, bad, y, 1.0)(x, t), conditional(EXACT, y)(x, t))
    assert torch.equal(autoguidance(EXACT, bad, y, 0.0)(x, t), conditional(bad, y)(x, t))
    from lessonlib.nets.unet import UNet

    small = dict(base_channels=8, channel_mults=(1, 2), groups=4, attention_resolutions=())
    with pytest.raises(ValueError, match="guide model has num_classes = 5, the main model 10"):
        autoguidance(UNet(**small, num_classes=10), UNet(**small, num_classes=5), y, 2.0)
    with pytest.raises(ValueError, match="prediction = 'velocity'"):
        autoguidance(UNet(**small, num_classes=10), UNet(**small, num_classes=10, prediction="velocity"), y, 2.0)
    with pytest.raises(ValueError, match="must predict the same thing"):
        autoguidance(EXACT, lambda x, t, c: x[:, :1], y, 2.0, probe=(x, t))


def test_the_tree_toy_has_exact_class_scores_and_samples_its_classes():
    tree = GaussianMixture2D.tree()
    assert tree.num_classes == 2 and len(tree.means) == 2 * (2 ** 4 - 1)
    x, _ = tree.sample(64, generator=torch.Generator().manual_seed(4))
    x = x.double().requires_grad_()
    for abar in (0.3, 0.9):
        for c in (0, 1):
            log_pc = torch.logsumexp(tree.log_joint(x, abar)[:, tree.labels == c], 1)
            (auto,) = torch.autograd.grad(log_pc.sum(), x)
            torch.testing.assert_close(tree.score(x.detach(), abar, c), auto)
    assert tree.posterior(x.detach(), 1.0).shape == (64, 2)
    pts, labels = tree.sample(500, generator=torch.Generator().manual_seed(5), y=1)
    assert torch.all(labels == 1) and float(tree.posterior(pts.double(), 1.0)[:, 1].mean()) > 0.95
    trunk = tree.means[(tree.levels == 0) & (tree.labels == 0)][0]
    assert math.isclose(float(tree.posterior(trunk[None] + torch.tensor([[-0.05, 0.4]]), 1.0)[0, 0]), 1.0, abs_tol=1e-3)
    with pytest.raises(ValueError, match="labels must give one class per component"):
        GaussianMixture2D(TOY.means, TOY.covs, TOY.weights, labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer classes"):
        GaussianMixture2D(TOY.means, TOY.covs, TOY.weights, labels=torch.tensor([0.0, 0.9, 1.0]))
    with pytest.raises(ValueError, match="width must lie"):
        GaussianMixture2D.tree(width=0.0)


def test_the_tree_toy_class_densities_integrate_to_one_and_name_the_branch_a_point_is_on():
    tree = GaussianMixture2D.tree()
    axis = torch.linspace(-7, 7, 281, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    cell = float(axis[1] - axis[0]) ** 2
    for c in (0, 1):  # at abar = 0.3 every component is wide enough for a 0.05 grid
        assert math.isclose(float(tree.log_prob(grid, 0.3, c).exp().sum()) * cell, 1.0, rel_tol=1e-3)
    x, _ = tree.sample(32, generator=torch.Generator().manual_seed(6))
    class_weights = torch.stack([tree.weights[tree.labels == c].sum() for c in (0, 1)])
    by_bayes = torch.logsumexp(torch.stack([tree.log_prob(x.double(), 0.7, c) for c in (0, 1)], 1)
                               + class_weights.log(), 1)
    torch.testing.assert_close(by_bayes, tree.log_prob(x.double(), 0.7))
    tips = ((tree.levels == 3) & (tree.labels == 1)).nonzero().squeeze(1)
    found = tree.component_of(tree.means[tips], 1.0, 1)
    assert torch.equal(found, tips)
    assert torch.all(tree.labels[tree.component_of(tree.means[tips], 1.0, 0)] == 0)  # within the class asked for
    with pytest.raises(ValueError, match="classes of this mixture are 0..1"):
        tree.log_prob(x, 1.0, 2)


def test_proportion_interval_is_wilsons_and_refuses_impossible_counts():
    p, lo, hi = proportion_interval(5, 10)
    assert p == 0.5 and math.isclose(lo, 0.2366, abs_tol=1e-4) and math.isclose(hi, 0.7634, abs_tol=1e-4)
    p, lo, hi = proportion_interval(0, 10)
    assert p == 0 and lo == 0 and math.isclose(hi, 0.2775, abs_tol=1e-4)  # not the normal interval's 0 width
    g = torch.Generator().manual_seed(0)
    draws = (torch.rand(2000, 200, generator=g) < 0.03).sum(1)
    covered = sum(lo <= 0.03 <= hi for lo, hi in (proportion_interval(int(k), 200)[1:] for k in draws))
    assert 0.93 <= covered / 2000 <= 0.99
    for hits, n in ((3, 2), (-1, 5), (1.5, 4), (0, 0)):
        with pytest.raises(ValueError, match="hits"):
            proportion_interval(hits, n)


@pytest.mark.slow
def test_a_conditional_toy_model_learns_and_a_smaller_one_is_worse():
    from lessonlib.training import fit_toy_cond_model

    tree = GaussianMixture2D.tree()
    good, losses = fit_toy_cond_model(tree, S, steps=1500, progress=False)
    bad, _ = fit_toy_cond_model(tree, S, steps=300, hidden=32, progress=False)
    x0, y = tree.sample(2000, generator=torch.Generator().manual_seed(6))
    t = torch.full((2000,), 200)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))
    from lessonlib.diffusion import q_sample

    x_t = q_sample(S, x0, t, noise)
    exact = tree.model(S)(x_t.double(), t, y).float()
    with torch.no_grad():
        err = {name: float((m(x_t, t, y) - exact).pow(2).mean()) for name, m in (("good", good), ("bad", bad))}
    assert err["good"] < 0.5 * err["bad"] and sum(losses[-100:]) < sum(losses[:100])


def test_a_distilled_student_takes_the_scale_starts_as_its_teacher_and_learns_the_guided_eps():
    from lessonlib.nets.unet import UNet
    from lessonlib.training import distill_loss_fn
    from lessonlib.variants import distilled

    small = dict(base_channels=8, channel_mults=(1, 2), groups=4, num_classes=10, attention_resolutions=())
    teacher = randomise(UNet(**small))  # a random teacher whose output depends on the class
    student = UNet(**small, scale_range=(0.0, 4.0))
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("scale_mlp.") for k in missing)
    x, y, t = torch.randn(4, 1, 28, 28), torch.arange(4), torch.full((4,), 500)
    with torch.no_grad():
        assert torch.equal(distilled(student, y, 2.0)(x, t), teacher(x, t, y))  # zero-initialised scale embedding
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(64, 1, 28, 28, generator=g) * 2 - 1, torch.arange(64) % 10
    loss = distill_loss_fn(teacher, images, labels, S, batch_size=16, scale_range=(0.0, 4.0), generator=g)
    first, last = loss_before_after(student, loss, steps=150, lr=3e-3, warmup=5)
    assert last < 0.7 * first, (first, last)
    class Exact(torch.nn.Module):  # a student that is the teacher's CFG at the scale it is told: loss exactly 0
        def forward(self, x, t, cond):
            u, c = teacher(x, t, torch.full_like(cond["class"], -1)), teacher(x, t, cond["class"])
            return torch.lerp(u, c, cond["scale"].view(-1, 1, 1, 1))

    with torch.no_grad():
        assert float(loss(Exact(), 0)) < 1e-10
    with pytest.raises(ValueError, match=r"distilled for guidance scales in \[0, 4\]"):
        distilled(student, y, 6.0)(x, t)
    with pytest.raises(ValueError, match="distilled for guidance scales"):
        student(x, t, {"class": y, "scale": float("nan")})
    with pytest.raises(ValueError, match="give cond="):
        student(x, t, y)
    with pytest.raises(ValueError, match="takes no guidance scale"):
        teacher(x, t, {"class": y, "scale": 1.0})


@pytest.mark.slow
def test_lesson_11_methods_run_on_the_frontier_from_the_same_noise():
    from lessonlib.frontier import LESSON_11, measure_frontier

    methods = [m for m in LESSON_11 if not m.startswith("distilled")]
    rows, floor = measure_frontier(n=20, steps=3, methods=methods, scales={m: [1.0] for m in methods})
    assert [r["method"] for r in rows] == methods and floor > 0
    by = {r["method"]: r for r in rows}
    # at scale 1: CFG, APG, CFG-Zero* and autoguidance are the conditional model; CFG++ at lambda 1 is not
    assert all(abs(by[m]["fid_judge"] - by["CFG"]["fid_judge"]) < 1e-3 for m in methods if "CFG++" not in m)
    assert abs(by["CFG++ (lambda)"]["fid_judge"] - by["CFG"]["fid_judge"]) > 1e-3


def test_the_distill_task_builds_a_student_that_is_its_teacher_and_refuses_a_config_without_scales():
    from dataclasses import replace

    from lessonlib import zoo
    from lessonlib.recipes import RECIPES
    from lessonlib.tasks import Context, build_model
    from lessonlib.variants import distilled

    recipe = RECIPES["mnist-cfg-distilled"]
    student, teacher = build_model(Context(recipe, S)).eval(), zoo.load("mnist-cfg")
    x, y, t = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.arange(4), torch.full((4,), 300)
    with torch.no_grad():
        assert torch.equal(distilled(student, y, 5.0)(x, t), teacher(x, t, y))
    with pytest.raises(ValueError, match="needs scale_range"):
        build_model(Context(replace(recipe, config={**recipe.config, "scale_range": None}), S))
