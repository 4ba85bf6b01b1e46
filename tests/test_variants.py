import pytest
import torch

from lessonlib.diffusion import x0_from_eps
from lessonlib.frontier import best_points, format_frontier, measure_frontier
from lessonlib.guidance import batched_cfg
from lessonlib.schedules import linear_schedule
from lessonlib.variants import cfg_variant, check_interval, parallel_part

S = linear_schedule(1000)


def toy_model(x, t, cond):
    """A stand-in eps-model whose prediction depends on x, t and the class (-1 = null) in a non-trivial way."""
    c = torch.as_tensor(cond).float().reshape(-1, 1, 1, 1)
    return torch.tanh(0.7 * x + 0.1 * c * x.flip(-1) + 0.3 * c) * (1 + t.reshape(-1, 1, 1, 1) / 1000)


@pytest.fixture
def xt():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 1, 6, 6, generator=g), torch.tensor([900, 600, 300, 50])


def test_every_variant_is_plain_cfg_at_its_neutral_setting(xt):
    x, t = xt
    y = torch.tensor([1, 2, 3, 4])
    plain = batched_cfg(toy_model, y, -1, 3.0)(x, t)
    assert torch.equal(cfg_variant(toy_model, y, -1, 3.0, schedule=S)(x, t), plain)
    for options in ({"parallel": 1.0, "space": "x0"}, {"rescale": 0.0}, {"interval": (0, 999)}):
        torch.testing.assert_close(cfg_variant(toy_model, y, -1, 3.0, schedule=S, **options)(x, t), plain)


def test_projection_removes_exactly_the_parallel_component(xt):
    x, t = xt
    y = torch.tensor([1, 2, 3, 4])
    eps_c = toy_model(x, t, y)
    for space in ("eps", "x0"):
        out = cfg_variant(toy_model, y, -1, 3.0, schedule=S, parallel=0.0, space=space)(x, t)
        if space == "x0":
            c, out = x0_from_eps(S, x, t, eps_c), x0_from_eps(S, x, t, out)
        else:
            c = eps_c
        update = out - c
        dots = (update * c).flatten(1).sum(1)
        assert dots.abs().max() < 1e-4 * update.flatten(1).norm(dim=1).max() * c.flatten(1).norm(dim=1).max()
        assert update.abs().max() > 1e-3  # something perpendicular is left
    d, c = torch.randn(3, 5), torch.randn(3, 5)
    par = parallel_part(d, c)
    torch.testing.assert_close(((d - par) * c).sum(1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(parallel_part(par, c), par)


def test_interval_guides_inside_and_is_conditional_outside(xt):
    x, t = xt
    y = torch.tensor([1, 2, 3, 4])
    out = cfg_variant(toy_model, y, -1, 5.0, schedule=S, interval=(200, 700))(x, t)
    plain = batched_cfg(toy_model, y, -1, 5.0)(x, t)
    cond = toy_model(x, t, y)
    torch.testing.assert_close(out[[1, 2]], plain[[1, 2]])  # t = 600, 300: inside
    torch.testing.assert_close(out[[0, 3]], cond[[0, 3]])  # t = 900, 50: plain conditional


def test_full_rescale_matches_the_conditional_std(xt):
    x, t = xt
    y = torch.tensor([1, 2, 3, 4])
    out = cfg_variant(toy_model, y, -1, 7.0, schedule=S, rescale=1.0)(x, t)
    std = lambda e: x0_from_eps(S, x, t, e).flatten(1).std(1)  # noqa: E731
    torch.testing.assert_close(std(out), std(toy_model(x, t, y)), rtol=1e-4, atol=1e-5)


def test_linear_schedule_keeps_the_mean_scale():
    from lessonlib.variants import _scale_at

    t = torch.arange(1000)
    s = _scale_at(4.0, t, 1000, None, "linear", torch.zeros(1000, 1))
    assert s.mean().item() == pytest.approx(4.0, rel=1e-3) and s[-1].item() == 0 and s[0].item() == 8


@pytest.mark.parametrize("options, msg", [
    ({"interval": (700, 200)}, "smaller timestep first"), ({"interval": (-1, 10)}, "0 <= lo"),
    ({"interval": (0, 1000)}, "<= 999"), ({"rescale": 1.5}, r"\[0, 1\]"), ({"rescale": float("nan")}, r"\[0, 1\]"),
    ({"space": "v"}, "space"), ({"scale_schedule": "cosine"}, "scale_schedule"), ({"parallel": float("nan")}, "finite"),
])
def test_bad_options_get_clear_errors(options, msg):
    with pytest.raises(ValueError, match=msg):
        cfg_variant(toy_model, 1, -1, 3.0, schedule=S, **options)
    assert check_interval(None, 1000) is None


@pytest.mark.slow
def test_frontier_measures_every_scale_from_the_same_noise_and_picks_best_points():
    rows, floor = measure_frontier(n=20, steps=3, methods=["CFG", "CFG rescale 0.7"])
    assert [r["method"] for r in rows].count("CFG") == 6 and floor > 0
    assert all(0 <= r["adherence"] <= 1 and r["fid_judge"] > 0 for r in rows)
    assert all(0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 for r in rows)
    assert len({(r["precision"], r["recall"]) for r in rows}) > 1  # measured per row, not one value for all
    best = best_points(rows, min_adherence=2.0)  # unreachable: falls back to the most adherent scale
    assert best["CFG"]["adherence"] == max(r["adherence"] for r in rows if r["method"] == "CFG")
    assert "best operating point" in format_frontier(rows, floor)
    with pytest.raises(ValueError, match="multiple of 10"):
        measure_frontier(n=15)
    with pytest.raises(ValueError, match="unknown methods"):
        measure_frontier(n=20, methods=["CFG++"])


def test_perp_cfg_scales_only_the_part_perpendicular_to_the_unconditional_prediction(xt):
    """Perp-CFG as seed 001 describes it: u + d_par + s d_perp with the projection along u, by hand."""
    x, t = xt
    y = torch.tensor([1, 2, 3, 4])
    u, c = toy_model(x, t, torch.full((4,), -1)), toy_model(x, t, y)
    d = c - u
    par = ((d * u).flatten(1).sum(1) / (u * u).flatten(1).sum(1)).reshape(-1, 1, 1, 1) * u
    by_hand = u + par + 4.0 * (d - par)
    out = cfg_variant(toy_model, y, -1, 4.0, schedule=S, parallel=0.0, along="uncond")(x, t)
    torch.testing.assert_close(out, by_hand, rtol=1e-5, atol=1e-6)
    # what it removes relative to plain CFG lies along u: the guided update minus CFG's is a multiple of u
    gap = (out - batched_cfg(toy_model, y, -1, 4.0)(x, t)).flatten(1)
    cos = (gap * u.flatten(1)).sum(1) / (gap.norm(dim=1) * u.flatten(1).norm(dim=1))
    assert torch.allclose(cos.abs(), torch.ones(4), atol=1e-4)
    apg_like = cfg_variant(toy_model, y, -1, 4.0, schedule=S, parallel=0.0)(x, t)
    assert (out - apg_like).abs().max() > 1e-3  # along u is not along c
    assert torch.equal(cfg_variant(toy_model, y, -1, 4.0, schedule=S, along="uncond")(x, t),
                       batched_cfg(toy_model, y, -1, 4.0)(x, t))  # neutral at parallel = 1
    with pytest.raises(ValueError, match="Perp-CFG"):
        cfg_variant(toy_model, y, -1, 4.0, schedule=S, along="null")
