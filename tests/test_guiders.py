"""diffusers' guiders and ours, fed the same predictions (``pytest -k diffusers``), and the rules' own properties."""
import logging

import pytest
import torch

from lessonlib.guiders import (
    cfg_rule,
    frequency_decoupled,
    frequency_decoupled_rule,
    from_pyramid,
    in_window,
    independent_condition,
    laplacian_pyramid,
    magnitude_aware,
    magnitude_aware_rule,
    perturbed_rule,
    stack_rule,
    tangential_cfg,
    tangential_part,
    tangential_rule,
)
from lessonlib.schedules import linear_schedule
from lessonlib.types import NULL_CLASS
from lessonlib.variants import apg, cfg_zero_star

SHAPES = [(3, 1, 8, 8), (2, 3, 4, 4), (4, 16)]
SCALES = [1.5, 3.0, 7.5]


def _preds(shape, seed=0, n=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(n)]


@pytest.fixture(scope="module")
def guiders():
    g = pytest.importorskip("diffusers.guiders", reason="diffusers is in the dev extra: pip install -e '.[dev]'")
    logging.getLogger("diffusers").setLevel(logging.ERROR)  # "guiders are experimental", once per guider
    return g


def _run(guider, *preds, step=0, steps=10):
    guider.set_state(step, steps, torch.tensor(999))
    return guider.forward(*preds).pred  # the combination step itself (__call__ takes a pipeline's batches)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("rescale", [0.0, 0.7])
def test_cfg_and_its_rescale_match_diffusers(guiders, shape, scale, rescale):
    c, u, _ = _preds(shape)
    ref = _run(guiders.ClassifierFreeGuidance(guidance_scale=scale, guidance_rescale=rescale), c, u)
    assert torch.allclose(cfg_rule(c, u, scale, rescale=rescale), ref, atol=1e-10)
    # the original formulation c + w (c - u) is ours at s = w + 1
    orig = _run(guiders.ClassifierFreeGuidance(guidance_scale=scale, use_original_formulation=True), c, u)
    assert torch.allclose(cfg_rule(c, u, scale + 1), orig, atol=1e-10)


@pytest.mark.parametrize("start, stop", [(0.0, 1.0), (0.2, 0.8), (0.5, 0.55), (0.0, 0.3)])
def test_the_guidance_window_matches_diffusers(guiders, start, stop):
    c, u, _ = _preds((2, 4))
    guider = guiders.ClassifierFreeGuidance(guidance_scale=4.0, start=start, stop=stop)
    for steps in (7, 10, 25):
        for step in range(steps):
            guided = not torch.allclose(_run(guider, c, u, step=step, steps=steps), c)
            assert in_window(step, steps, start, stop) == guided, (step, steps)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", SCALES)
def test_tangential_cfg_matches_diffusers(guiders, shape, scale):
    c, u, _ = _preds(shape, seed=1)
    ref = _run(guiders.TangentialClassifierFreeGuidance(guidance_scale=scale), c.float(), u.float())
    assert torch.allclose(tangential_rule(c.float(), u.float(), scale), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale, alpha", [(1.5, 8.0), (5.0, 2.0), (10.0, 0.5)])
def test_magnitude_aware_guidance_matches_diffusers(guiders, shape, scale, alpha):
    c, u, _ = _preds(shape, seed=2)
    # diffusers 0.42.1 takes torch.norm over every non-batch dimension, which torch 2.14 refuses for 3 or more
    # (images): it is fed the flattened predictions, ours the images themselves
    flat = _run(guiders.MagnitudeAwareGuidance(guidance_scale=scale, alpha=alpha), c.flatten(1), u.flatten(1))
    assert torch.allclose(magnitude_aware_rule(c, u, scale, alpha=alpha), flat.reshape(shape), atol=1e-10)


@pytest.mark.parametrize("name, scale_key", [("PerturbedAttentionGuidance", "perturbed_guidance"),
                                             ("SkipLayerGuidance", "skip_layer_guidance"),
                                             ("SmoothedEnergyGuidance", "seg_guidance")])
@pytest.mark.parametrize("scale, w", [(3.0, 2.8), (7.5, 1.5), (1.0, 3.0)])
def test_perturbation_guiders_combine_as_diffusers_with_our_scale_convention(guiders, name, scale_key, scale, w):
    c, u, p = _preds((2, 1, 8, 8), seed=3)
    options = {f"{scale_key}_scale": w, f"{scale_key}_start": 0.0, f"{scale_key}_stop": 1.0, "guidance_scale": scale}
    if name != "SmoothedEnergyGuidance":
        options[f"{scale_key}_layers" if name == "PerturbedAttentionGuidance" else "skip_layer_guidance_layers"] = [0]
    else:
        options["seg_guidance_layers"] = [0]
    ref = _run(getattr(guiders, name)(**options), c, u, p, step=3, steps=10)
    if scale == 1.0:  # CFG off: diffusers uses p + w (c - p), the perturbation guider alone, as we do
        assert torch.allclose(perturbed_rule(c, None, p, scale, w), ref, atol=1e-10)
    else:  # CFG on: diffusers adds w (c - p); in our convention that is the weight w + 1
        assert torch.allclose(perturbed_rule(c, u, p, scale, w + 1), ref, atol=1e-10)
        assert not torch.allclose(perturbed_rule(c, u, p, scale, w), ref)  # the difference, on purpose


def _fake_model(steps):
    """A 'model' that returns the given unconditional / conditional predictions at each step's timestep."""
    def model(x, t, cond):
        k = steps[int(t[0])]
        null = torch.as_tensor(cond).reshape(-1, *([1] * (x.ndim - 1))) == NULL_CLASS
        return torch.where(null, k[1].repeat(2, *([1] * (x.ndim - 1)))[: len(x)],
                           k[0].repeat(2, *([1] * (x.ndim - 1)))[: len(x)])
    return model


@pytest.mark.parametrize("scale", [2.0, 4.0])
def test_cfg_zero_star_matches_diffusers(guiders, scale):
    shape = (3, 1, 4, 4)
    c, u, _ = _preds(shape, seed=4)
    model = _fake_model({10: (c, u)})
    ours = cfg_zero_star(model, torch.tensor([1, 2, 3]), NULL_CLASS, scale)(torch.zeros(shape), torch.full((3,), 10))
    ref = _run(guiders.ClassifierFreeZeroStarGuidance(guidance_scale=scale, zero_init_steps=0), c, u)
    assert torch.allclose(ours, ref, atol=1e-6)


@pytest.mark.parametrize("eta, r, momentum", [(0.0, 5.0, -0.5), (1.0, 2.0, 0.0), (0.3, 50.0, -0.75)])
def test_apg_over_a_sampling_run_matches_diffusers_original_formulation(guiders, eta, r, momentum):
    """Ours is the paper's c + (s - 1)(d_perp + eta d_par): diffusers' use_original_formulation at scale s - 1."""
    from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer

    shape, scale = (2, 1, 6, 6), 4.0
    ts = [40, 30, 20, 10]
    steps = {t: tuple(_preds(shape, seed=t, n=2)) for t in ts}
    ours = apg(_fake_model(steps), torch.tensor([1, 2]), NULL_CLASS, scale, schedule=linear_schedule(50), eta=eta,
               norm_threshold=r, momentum=momentum, space="eps")
    guider = guiders.AdaptiveProjectedGuidance(guidance_scale=scale - 1, adaptive_projected_guidance_momentum=momentum,
                                               adaptive_projected_guidance_rescale=r, eta=eta,
                                               use_original_formulation=True)
    guider.momentum_buffer = MomentumBuffer(momentum)  # what its prepare_inputs does at step 0 of a pipeline
    for i, t in enumerate(ts):
        c, u = steps[t]
        got = ours(torch.zeros(shape), torch.full((2,), t))
        assert torch.allclose(got.double(), _run(guider, c, u, step=i, steps=len(ts)), atol=1e-6), t


@pytest.mark.parametrize("eta, r, momentum, cfg_steps", [(0.0, 5.0, -0.5, 3), (0.5, None, -0.7, 1), (0.0, 3.0, 0.0, 5)])
def test_apg_mix_over_a_sampling_run_matches_diffusers(guiders, eta, r, momentum, cfg_steps):
    """CFG at one scale for the first steps, APG at another after them; the momentum average runs through both."""
    from diffusers.guiders.adaptive_projected_guidance_mix import MomentumBuffer

    shape, ts = (2, 1, 8, 8), [900, 700, 500, 300, 200, 100, 50, 10]
    steps = {t: tuple(_preds(shape, seed=t, n=2)) for t in ts}
    ours = apg(_fake_model(steps), torch.tensor([1, 2]), NULL_CLASS, 4.0, schedule=linear_schedule(1000), eta=eta,
               norm_threshold=r, momentum=momentum, space="eps", cfg_scale=2.5, cfg_steps=cfg_steps)
    guider = guiders.AdaptiveProjectedMixGuidance(
        guidance_scale=1.5, adaptive_projected_guidance_scale=3.0, adaptive_projected_guidance_momentum=momentum,
        adaptive_projected_guidance_rescale=r or 0.0, eta=eta, use_original_formulation=True,
        adaptive_projected_guidance_start_step=cfg_steps - 1)
    guider.momentum_buffer = MomentumBuffer(momentum)  # what its prepare_inputs does at step 0 of a pipeline
    for i, t in enumerate(ts):
        c, u = steps[t]
        got = ours(torch.zeros(shape), torch.full((2,), t))
        assert torch.allclose(got.double(), _run(guider, c, u, step=i, steps=len(ts)), atol=1e-6), (i, t)
        if i < cfg_steps:  # and the first steps are CFG at cfg_scale
            assert torch.allclose(got.double(), cfg_rule(c, u, 2.5), atol=1e-6)


@pytest.mark.parametrize("scale, rescale", [(2.0, 0.0), (4.5, 0.7)])
def test_autoguidance_combines_as_diffusers_autoguidance(guiders, scale, rescale):
    """diffusers' AutoGuidance gets the damaged network's prediction as pred_uncond (its layer-skip hooks act on
    diffusers' transformers; ours on the course's U-Net, tests/test_perturb.py): bad + w (good - bad), in a window."""
    c, bad, _ = _preds((2, 1, 8, 8), seed=12)
    guider = guiders.AutoGuidance(guidance_scale=scale, auto_guidance_layers=[1], dropout=1.0,
                                  guidance_rescale=rescale, start=0.2, stop=0.8)
    for step in range(10):
        ours = cfg_rule(c, bad, scale, rescale=rescale) if in_window(step, 10, 0.2, 0.8) else c
        assert torch.allclose(ours, _run(guider, c, bad, step=step), atol=1e-9), step


@pytest.mark.parametrize("scale, stg, modality, rescale", [(3.0, 1.0, 2.0, 0.0), (4.0, 0.5, 1.0, 0.7), (1.0, 2.0, 3.0, 0.0)])
def test_three_guiders_at_once_sum_their_deltas_as_diffusers_ltx2_does(guiders, scale, stg, modality, rescale):
    """LTX2Guidance: a CFG term, a perturbed-blocks term and a modality term, each a delta from the conditional
    prediction; stack_rule is that sum (its STG scale is our w - 1, as for the perturbation guiders with CFG on)."""
    if not hasattr(guiders, "LTX2Guidance"):
        pytest.skip("this diffusers has no LTX2Guidance")
    c, u, p = _preds((2, 4, 8, 8), seed=13)
    m = _preds((2, 4, 8, 8), seed=14, n=1)[0]
    guider = guiders.LTX2Guidance(guidance_scale=scale, stg_scale=stg, modality_scale=modality,
                                  guidance_rescale=rescale)
    guider.set_state(0, 10, torch.tensor(999))
    ref = guider.forward(c, u, p, m).pred
    ours = stack_rule(c, [(u, scale), (p, stg + 1), (m, modality)], rescale=rescale)
    assert torch.allclose(ours, ref, atol=1e-9)


@pytest.fixture(scope="module")
def kornia_pyramid():
    return pytest.importorskip("kornia.geometry.transform", reason="kornia is in the dev extra (diffusers' FDG)")


@pytest.mark.parametrize("shape, levels", [((2, 3, 32, 32), 1), ((2, 3, 32, 32), 3), ((1, 1, 16, 64), 2),
                                           ((2, 1, 28, 28), 2)])
def test_the_laplacian_pyramid_is_kornias_and_sums_back_to_the_image(kornia_pyramid, shape, levels):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ours = laplacian_pyramid(x, levels)
    theirs = kornia_pyramid.build_laplacian_pyramid(x, levels)
    assert len(ours) == levels and all(torch.allclose(a, b, atol=1e-12) for a, b in zip(ours, theirs))
    assert torch.allclose(from_pyramid(ours, tuple(shape[-2:])), x, atol=1e-12)
    if levels > 1:  # the bands are real frequency bands: the finest one has most of white noise's energy
        assert float(ours[0].pow(2).mean()) > float(ours[-1].pow(2).mean())


@pytest.mark.parametrize("shape", [(2, 4, 32, 32), (3, 1, 16, 16)])
@pytest.mark.parametrize("scales, weights, rescale", [([10.0, 5.0], None, 0.0), ([10.0, 5.0, 2.0], [0.5, 1.0, 0.0], 0.7),
                                                      ([3.0, 0.5], [0.2, 0.2], 0.0), ([1.0, 1.0], None, 0.0)])
def test_frequency_decoupled_guidance_matches_diffusers(guiders, kornia_pyramid, shape, scales, weights, rescale):
    c, u, _ = _preds(shape, seed=8)
    ref = _run(guiders.FrequencyDecoupledGuidance(guidance_scales=scales, parallel_weights=weights,
                                                  guidance_rescale=rescale), c, u)
    assert torch.allclose(frequency_decoupled_rule(c, u, scales, parallel_weights=weights, rescale=rescale), ref,
                          atol=1e-9)


def test_fdg_keeps_mnists_size_where_diffusers_returns_the_padded_one(guiders, kornia_pyramid):
    c, u, _ = _preds((2, 1, 28, 28), seed=9)
    ref = _run(guiders.FrequencyDecoupledGuidance(guidance_scales=[10.0, 5.0]), c, u)
    ours = frequency_decoupled_rule(c, u, [10.0, 5.0])
    assert tuple(ref.shape[-2:]) == (32, 32) and tuple(ours.shape) == (2, 1, 28, 28)  # diffusers 0.42.1's shape
    assert torch.allclose(ours, ref[..., :28, :28], atol=1e-9)  # the same guidance, cropped back


def test_fdg_windows_match_diffusers_where_its_windows_work(guiders, kornia_pyramid):
    """A window for all bands matches diffusers. diffusers 0.42.1 fails when only some bands are switched off
    (outside their window, or at scale 1: such a band takes the last guided band's prediction, of another size),
    so per-band windows are compared only where it runs; ours keeps c's band there."""
    c, u, _ = _preds((2, 1, 32, 32), seed=10)
    for start, stop in [(0.0, 1.0), (0.2, 0.7)]:
        guider = guiders.FrequencyDecoupledGuidance(guidance_scales=[6.0, 2.0], start=start, stop=stop)
        for step in range(10):
            on = in_window(step, 10, start, stop)
            assert torch.allclose(frequency_decoupled_rule(c, u, [6.0, 2.0], active=[on, on]),
                                  _run(guider, c, u, step=step), atol=1e-9), (start, stop, step)
    guider = guiders.FrequencyDecoupledGuidance(guidance_scales=[6.0, 2.0], start=[0.0, 0.5], stop=[1.0, 1.0])
    ours = frequency_decoupled_rule(c, u, [6.0, 2.0], active=[True, False])
    (c0, c1), (u0, _) = laplacian_pyramid(c, 2), laplacian_pyramid(u, 2)
    assert torch.allclose(ours, from_pyramid([u0 + 6.0 * (c0 - u0), c1]), atol=1e-9)  # the coarse band is c's
    try:
        ref = _run(guider, c, u, step=2)
    except RuntimeError:
        return  # diffusers 0.42.1: the switched-off band takes the fine band's prediction, of another size
    assert torch.allclose(ours, ref, atol=1e-9)


def test_fdg_with_one_scale_for_every_band_is_cfg_and_its_eps_function_one_batched_pass():
    c, u, _ = _preds((2, 1, 28, 28), seed=11)
    assert torch.allclose(frequency_decoupled_rule(c, u, [4.0, 4.0, 4.0]), cfg_rule(c, u, 4.0), atol=1e-9)
    (c0, c1), (u0, _) = laplacian_pyramid(c, 2), laplacian_pyramid(u, 2)  # a scale-1 band keeps c's band
    assert torch.allclose(frequency_decoupled_rule(c, u, [4.0, 1.0]), from_pyramid([u0 + 4 * (c0 - u0), c1], (28, 28)),
                          atol=1e-9)
    calls = []
    model = _fake_model({10: (c, u)})
    counted = lambda x, t, y: calls.append(len(x)) or model(x, t, y)  # noqa: E731
    out = frequency_decoupled(counted, torch.tensor([1, 2]), NULL_CLASS, [4.0, 2.0])(torch.zeros(2, 1, 28, 28),
                                                                                    torch.full((2,), 10))
    assert calls == [4] and torch.allclose(out, frequency_decoupled_rule(c, u, [4.0, 2.0]), atol=1e-6)


def test_tangential_part_keeps_what_c_and_u_share():
    c = torch.tensor([[1.0, 0.0, 0.0]])
    assert torch.allclose(tangential_part(c, 2 * c), 2 * c)  # u along c: kept whole
    u = torch.tensor([[1.0, 1.0, 0.0]])
    kept = tangential_part(c, u)
    assert 0 < float(kept.norm()) < float(u.norm())  # part of u is dropped
    assert float(kept[0, 2]) == 0.0


def test_stack_rule_is_cfg_with_one_term_and_sums_deltas():
    c, u, p = _preds((2, 5), seed=5)
    assert torch.allclose(stack_rule(c, [(u, 3.0)]), cfg_rule(c, u, 3.0))
    assert torch.allclose(stack_rule(c, [(u, 3.0), (p, 1.0)]), cfg_rule(c, u, 3.0))  # w = 1: no term
    both = stack_rule(c, [(u, 3.0), (p, 2.0)])
    assert torch.allclose(both - cfg_rule(c, u, 3.0), c - p)


def test_magnitude_aware_falls_back_towards_the_conditional_where_the_difference_is_large():
    u = torch.ones(2, 4)
    c = torch.stack([torch.full((4,), 1.1), torch.full((4,), 5.0)])
    out = magnitude_aware_rule(c, u, 5.0, alpha=2.0)
    gain = (out - u) / (c - u)  # the effective scale per sample
    assert 1 < float(gain[1, 0]) < float(gain[0, 0]) < 5


def test_icg_uses_random_conditions_as_the_unconditional_branch():
    seen = []

    def model(x, t, y):
        seen.append(torch.as_tensor(y).clone())
        return x * 0 + torch.as_tensor(y).float().reshape(-1, 1)

    fn = independent_condition(model, torch.tensor([2, 2, 2, 2]), 3.0, num_classes=10,
                               generator=torch.Generator().manual_seed(0))
    out = fn(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
    random = seen[0][:4]
    assert torch.equal(seen[0][4:], torch.tensor([2, 2, 2, 2])) and not torch.all(random == NULL_CLASS)
    assert torch.allclose(out[:, 0], random.float() + 3.0 * (2 - random.float()))


@pytest.mark.parametrize("call, match", [
    (lambda: cfg_rule(torch.ones(2, 3), torch.ones(2, 4), 2.0), "one shape"),
    (lambda: cfg_rule(torch.ones(2, 3), torch.ones(2, 3), float("nan")), "finite"),
    (lambda: cfg_rule(torch.ones(2, 3), torch.ones(2, 3), 2.0, rescale=1.5), r"rescale .* \[0, 1\]"),
    (lambda: magnitude_aware(lambda *a: a[0], 1, NULL_CLASS, 3.0, alpha=-1.0), "alpha"),
    (lambda: stack_rule(torch.ones(2, 3), []), "at least one"),
    (lambda: in_window(10, 10), r"step must be an integer in \[0, 10\)"),
    (lambda: in_window(0, 10, start=0.6, stop=0.5), "start <= stop"),
    (lambda: in_window(0, 0), "positive integer"),
    (lambda: independent_condition(lambda *a: a[0], torch.tensor([12]), 3.0, num_classes=10), r"\[0, 10\)"),
    (lambda: independent_condition(lambda *a: a[0], torch.tensor([1]), 3.0, num_classes=1), "num_classes"),
    (lambda: tangential_cfg(lambda *a: a[0], 1, NULL_CLASS, float("inf")), "finite"),
    (lambda: frequency_decoupled_rule(torch.ones(2, 1, 8, 8), torch.ones(2, 1, 8, 8), [2.0, 1.0],
                                      parallel_weights=[1.0]), "one scale per band"),
    (lambda: frequency_decoupled_rule(torch.ones(2, 1, 8, 8), torch.ones(2, 1, 8, 8), []), "one scale per band"),
    (lambda: frequency_decoupled_rule(torch.ones(2, 1, 8, 8), torch.ones(2, 1, 8, 8), [2.0, 1.0, 1.0, 1.0]),
     "below 3 pixels"),
    (lambda: frequency_decoupled(lambda *a: a[0], 1, NULL_CLASS, [2.0, float("nan")]), "finite"),
    (lambda: laplacian_pyramid(torch.ones(2, 16), 2), r"\(B, C, H, W\)"),
    (lambda: laplacian_pyramid(torch.ones(2, 1, 8, 8), 0), "positive integer"),
    (lambda: apg(lambda *a: a[0], 1, NULL_CLASS, 3.0, schedule=linear_schedule(10), cfg_steps=3), "cfg_scale"),
    (lambda: apg(lambda *a: a[0], 1, NULL_CLASS, 3.0, schedule=linear_schedule(10), cfg_scale=2.0, cfg_steps=-1),
     "cfg_steps"),
])
def test_bad_settings_are_refused_with_a_reason(call, match):
    with pytest.raises(ValueError, match=match):
        call()
