"""The checkers can pass and can fail: for every exercise a solution written out passes, the stub fails with the
stub's message, a plausible wrong answer fails with a message that says what went wrong (issue 20), and a solution
that only calls the library's function for it is refused (issue 42)."""
import pytest
import torch
import torch.nn.functional as F

from lessonlib import clip, diffusion, flow, guidance, variants
from lessonlib.exercises import EXERCISES, PREDICTIONS, check, check_prediction, stub
from lessonlib.nets.controlnet import zero_conv
from lessonlib.nets.unet import modulate
from lessonlib.schedules import linear_schedule


def _b(a, like):
    return a.reshape(-1, *([1] * (like.ndim - 1)))


WRONG = {  # a plausible mistake per exercise, and what its message must say
    "score_from_eps": (lambda eps, abar: -eps / (1 - _b(abar, eps)), "hint: lesson 01"),  # the sqrt forgotten
    "ddim_step": (lambda x_t, eps, abar_t, abar_prev: _b(abar_prev, x_t).sqrt()
                  * (x_t - (1 - _b(abar_t, x_t)).sqrt() * eps) / _b(abar_t, x_t).sqrt()
                  + (1 - _b(abar_t, x_t)).sqrt() * eps, "the new noise level is abar_prev's"),  # re-noised at t
    "cfg": (lambda eps_u, eps_c, scale: (1 + scale) * eps_c - scale * eps_u, "w = s - 1"),  # the other convention
    "parallel_part": (lambda d, c: (d * c).sum() / (c * c).sum() * c, "one coefficient per sample"),  # whole batch
    "eps_from_velocity": (lambda x_t, v, t: x_t - (1 - _b(t, x_t)) * v, "eps_hat = x_t + (1 - t) v_hat"),  # sign
    # indexed by loop position instead of timestep
    "q_sample": (lambda x0, t, eps, abar: _b(abar[: len(x0)], x0).sqrt() * x0 + (1 - _b(abar[: len(x0)], x0)).sqrt()
                 * eps, "not by its position in the batch"),
    # the clean image given to the classifier
    "noise_aware_loss": (lambda classifier, x0, y, t, eps, abar: F.cross_entropy(classifier(x0, t), y), "noise first"),
    "classifier_guided_eps": (lambda eps, grad, abar, scale: eps + scale * (1 - _b(abar, eps)).sqrt() * grad,
                              "subtracting the gradient"),  # a sign error
    "contrastive_loss": (lambda image_emb, text_emb, logit_scale: F.cross_entropy(  # one direction only
        logit_scale * F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T, torch.arange(len(image_emb))),
        "over rows and over columns"),
    "cosine_grad": (lambda encoder, text_emb, x: torch.autograd.grad(F.cosine_similarity(  # a mean, not a sum
        encoder(xx := x.detach().requires_grad_()), text_emb.expand(len(x), -1), dim=-1).mean(), xx)[0],
        "a mean would divide"),
    "compose": (lambda eps_u, eps_list, scales: eps_u + sum(s * (e - eps_u) for e, s in zip(eps_list, scales))
                / len(eps_list), "not an average"),
    "rescale": (lambda guided, cond, phi: phi * guided * cond.std() / guided.std() + (1 - phi) * guided,
                "one ratio std(cond) / std(guided) per image"),  # whole-batch std
    "film": (lambda h, scale, shift: h * scale[:, :, None, None] + shift[:, :, None, None],
             "zero scale and shift leave h as it is"),  # h * scale, not h * (1 + scale)
    "zero_conv": (lambda channels: _weight_only_zero(channels), "its bias set to zero"),
    "euler_step": (lambda x_t, v, t, t_next: x_t + _b(t - t_next, x_t) * v, "t_next - t is negative"),  # backwards
    # log p summed as a mean: every image's gradient divided by B
    "guided_eps": (lambda eps_model, classifier, x_t, t, y, abar_t, scale: _guided_eps(
        eps_model, classifier, x_t, t, y, abar_t, scale / len(x_t)), "a mean would divide"),
    "cfg_eps": (lambda model, x_t, t, y, null, scale: model(x_t, t, torch.full_like(y, null)) + scale * (  # two passes
        model(x_t, t, y) - model(x_t, t, torch.full_like(y, null))), "call the model once"),
    "apg_combine": (lambda c, u, scale, eta, r: u + scale * (_apg_combine(c, u, 2.0, eta, r) - c),  # diffusers' default
                    "not diffusers' default"),
    "flow_matching_loss": (lambda v_model, x0, eps, t: ((v_model((1 - _b(t, x0)) * x0 + _b(t, x0) * eps, t)
                                                         - (x0 - eps)) ** 2).mean(),  # the target flipped
                           "t = 0 is data"),
}


def _guided_eps(eps_model, classifier, x_t, t, y, abar_t, scale):
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        log_p = torch.log_softmax(classifier(x, t), dim=1)[torch.arange(len(x)), y]
        grad = torch.autograd.grad(log_p.sum(), x)[0]
    return eps_model(x_t, t) - scale * _b(1 - abar_t, x_t).sqrt() * grad


def _cfg_eps(model, x_t, t, y, null, scale):
    labels = torch.cat([y, torch.full_like(y, null)])
    out = model(torch.cat([x_t, x_t]), torch.cat([t, t]), labels)
    eps_c, eps_u = out[: len(x_t)], out[len(x_t):]
    return eps_u + scale * (eps_c - eps_u)


def _apg_combine(c, u, scale, eta, r):
    d = c - u
    if r is not None:
        d = d * torch.clamp(r / d.flatten(1).norm(dim=1), max=1.0).reshape(-1, 1, 1, 1)
    d_par = (d * c).sum((1, 2, 3), keepdim=True) / (c * c).sum((1, 2, 3), keepdim=True) * c
    return c + (scale - 1) * (d - d_par + eta * d_par)


def _flow_matching_loss(v_model, x0, eps, t):
    x_t = (1 - _b(t, x0)) * x0 + _b(t, x0) * eps
    return ((v_model(x_t, t) - (eps - x0)) ** 2).mean()


def _cosine_grad(encoder, text_emb, x):
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        e = encoder(x)
        cos = (e * text_emb).sum(-1) / (e.norm(dim=-1) * text_emb.norm(dim=-1))
        return torch.autograd.grad(cos.sum(), x)[0]


def _contrastive_loss(image_emb, text_emb, logit_scale):
    logits = logit_scale * F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
    target = torch.arange(len(logits))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def _zero_conv(channels):
    conv = torch.nn.Conv2d(channels, channels, 1)
    torch.nn.init.zeros_(conv.weight)
    torch.nn.init.zeros_(conv.bias)
    return conv


def _rescale(guided, cond, phi):
    ratio = cond.flatten(1).std(1) / guided.flatten(1).std(1)
    return phi * guided * _b(ratio, guided) + (1 - phi) * guided


SOLUTIONS = {  # each written out with torch alone, as a student would: they must pass
    "score_from_eps": lambda eps, abar: -eps / _b(1 - abar, eps).sqrt(),
    "ddim_step": lambda x_t, eps, abar_t, abar_prev: _b(abar_prev, x_t).sqrt() * (x_t - _b(1 - abar_t, x_t).sqrt()
                                                                                  * eps) / _b(abar_t, x_t).sqrt()
    + _b(1 - abar_prev, x_t).sqrt() * eps,
    "cfg": lambda eps_u, eps_c, scale: (1 - scale) * eps_u + scale * eps_c,
    "parallel_part": lambda d, c: _b((d * c).flatten(1).sum(1) / (c * c).flatten(1).sum(1), c) * c,
    "eps_from_velocity": lambda x_t, v, t: x_t + _b(1 - t, x_t) * v,
    "q_sample": lambda x0, t, eps, abar: _b(abar[t], x0).sqrt() * x0 + _b(1 - abar[t], x0).sqrt() * eps,
    "noise_aware_loss": lambda classifier, x0, y, t, eps, abar: F.cross_entropy(
        classifier(_b(abar[t], x0).sqrt() * x0 + _b(1 - abar[t], x0).sqrt() * eps, t), y),
    "classifier_guided_eps": lambda eps, grad, abar, scale: eps - scale * _b(1 - abar, eps).sqrt() * grad,
    "contrastive_loss": _contrastive_loss,
    "cosine_grad": _cosine_grad,
    "compose": lambda eps_u, eps_list, scales: eps_u + sum(w * (e - eps_u) for e, w in zip(eps_list, scales)),
    "rescale": _rescale,
    "film": lambda h, scale, shift: h + h * scale[..., None, None] + shift[..., None, None],
    "zero_conv": _zero_conv,
    "euler_step": lambda x_t, v, t, t_next: x_t - _b(t - t_next, x_t) * v,
    "guided_eps": _guided_eps,
    "cfg_eps": _cfg_eps,
    "apg_combine": _apg_combine,
    "flow_matching_loss": _flow_matching_loss,
}

# a solution that only calls the library's function for it (where one takes the exercise's inputs): refused
LIBRARY_CALLS = {
    "cfg": lambda eps_u, eps_c, scale: guidance.combine(eps_u, [(eps_c, scale)]),
    "compose": lambda eps_u, eps_list, scales: guidance.combine(eps_u, list(zip(eps_list, scales))),
    "parallel_part": variants.parallel_part,
    "eps_from_velocity": lambda x_t, v, t: flow.eps_from_velocity(x_t, t, v),
    "q_sample": lambda x0, t, eps, abar: diffusion.q_sample(linear_schedule(len(abar)), x0, t, eps),
    "noise_aware_loss": lambda classifier, x0, y, t, eps, abar: F.cross_entropy(
        classifier(diffusion.q_sample(linear_schedule(len(abar)), x0, t, eps), t), y),
    "contrastive_loss": clip.contrastive_loss,
    "rescale": variants.rescaled,
    "film": modulate,
    "zero_conv": zero_conv,
    "guided_eps": lambda eps_model, classifier, x_t, t, y, abar_t, scale: eps_model(x_t, t) - scale * _b(
        1 - abar_t, x_t).sqrt() * guidance.classifier_grad(classifier, y)(x_t, t),
    "cfg_eps": lambda model, x_t, t, y, null, scale: guidance.batched_cfg(model, y, null, scale)(x_t, t),
    "apg_combine": lambda c, u, scale, eta, r: c + (scale - 1) * (
        (c - u) - variants.parallel_part(c - u, c) * (1 - eta)) if r is None else _apg_combine(c, u, scale, eta, r),
    "flow_matching_loss": lambda v_model, x0, eps, t: (v_model(flow.interpolate(x0, eps, t), t)
                                                       - flow.velocity_target(x0, eps)).pow(2).mean(),
}


def _weight_only_zero(channels):
    conv = torch.nn.Conv2d(channels, channels, 1)
    torch.nn.init.zeros_(conv.weight)  # the bias forgotten
    return conv


def test_every_exercise_has_a_tested_wrong_answer():
    assert set(WRONG) == set(EXERCISES)


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_a_written_out_solution_passes_the_stub_and_a_wrong_answer_fail(name, capsys):
    assert check(name, SOLUTIONS[name]).passed
    assert "correct on all" in capsys.readouterr().out
    result = check(name, stub(name))
    assert not result.passed and "not written yet" in result.message and EXERCISES[name].task in result.message
    wrong, says = WRONG[name]
    result = check(name, wrong)
    assert not result.passed and says in result.message, result.message
    assert "AssertionError" not in result.message


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_a_solution_that_calls_the_library_is_refused(name):
    reference = EXERCISES[name].reference
    calls = [lambda *args, **kwargs: reference(*args, **kwargs)] + ([LIBRARY_CALLS[name]] if name in LIBRARY_CALLS else [])
    for call in calls:
        result = check(name, call)
        assert not result.passed and "the library's own function" in result.message, result.message
        assert "hint:" in result.message


def test_the_refusal_names_the_function_however_it_was_imported_and_leaves_the_profiler_as_it_was():
    import sys

    from lessonlib.guidance import combine as renamed

    result = check("cfg", lambda eps_u, eps_c, scale: renamed(eps_u, [(eps_c, scale)]))
    assert not result.passed and "calls lessonlib.guidance.combine" in result.message
    assert sys.getprofile() is None
    # a helper of the student's own, and library functions that are not the answer, are fine
    assert check("apg_combine", lambda c, u, scale, eta, r: SOLUTIONS["apg_combine"](c, u, scale, eta, r)).passed
    assert check("cfg_eps", lambda model, x_t, t, y, null, scale: SOLUTIONS["cfg"](
        *_cfg_halves(model, x_t, t, y, null), scale)).passed


def _cfg_halves(model, x_t, t, y, null):
    eps_c, eps_u = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null)])).chunk(2)
    return eps_u, eps_c


def test_messages_name_the_input_shape_errors_exceptions_and_in_place_edits():
    result = check("score_from_eps", lambda eps, abar: -eps / (1 - abar).sqrt())  # (B,) does not broadcast
    assert not result.passed and "raised RuntimeError" in result.message and "toy points" in result.message
    result = check("score_from_eps", lambda eps, abar: -eps.mean(0))
    assert not result.passed and "returned shape (2,)" in result.message
    result = check("cfg", lambda eps_u, eps_c, scale: eps_u.add_(scale * (eps_c - eps_u)))
    assert not result.passed and "in place" in result.message
    result = check("cfg", lambda eps_u, eps_c, scale: (eps_u + scale * (eps_c - eps_u)).double())
    assert not result.passed and "dtype torch.float64" in result.message
    wrong = check("eps_from_velocity", WRONG["eps_from_velocity"][0])
    assert "expected tensor of shape (3, 1, 28, 28)" in wrong.message and "largest difference" in wrong.message
    assert not check("cfg", "eps_u + s * (eps_c - eps_u)").passed  # a string is not a function
    with pytest.raises(ValueError, match="no exercise named"):
        check("ddpm_step", lambda: None)


def test_predictions_are_judged_against_the_measurement_and_explained():
    assert check_prediction("cfg_diversity_trend", "down", "down").passed
    result = check_prediction("cfg_diversity_trend", "up", "down")
    assert not result.passed and "not what the lesson measured (down)" in result.message and "Why" in result.message
    assert "answer one of" in check_prediction("cfg_diversity_trend", "lower", "down").message
    assert "write your prediction first" in check_prediction("cfg_diversity_trend", None, "down").message
    assert check_prediction("cfgpp_scale_at_40_steps", 4.5, 5.13).passed
    result = check_prediction("cfgpp_scale_at_40_steps", 1.4, 5.13)
    assert not result.passed and "outside" in result.message
    with pytest.raises(ValueError, match="measured answer must be one of"):
        check_prediction("cfg_diversity_trend", "up", 0.3)
    assert check_prediction("adherence_at_scale_1", 0.6, 0.565).passed  # an accuracy: judged within 0.15
    result = check_prediction("adherence_at_scale_1", 1.0, 0.565)
    assert not result.passed and "outside 0.15 of it" in result.message


def test_the_student_version_replaces_solutions_by_their_stubs_and_refuses_a_solution_without_one(tmp_path):
    import json

    from lessonlib.exercises import main, student_version

    solution = {"cell_type": "code", "execution_count": 3, "outputs": [{"output_type": "stream", "text": "ok"}],
                "source": "def cfg(eps_u, eps_c, scale):\n    return eps_u + scale * (eps_c - eps_u)\n",
                "metadata": {"tags": ["solution"], "lessonlib": {"stub": "def cfg(eps_u, eps_c, scale):\n"
                                                                         "    raise NotImplementedError\n"}}}
    plain = {"cell_type": "markdown", "metadata": {}, "source": "Write CFG."}
    verdict = {"cell_type": "code", "execution_count": 4, "metadata": {}, "source": "check('cfg', cfg)",
               "outputs": [{"output_type": "stream", "name": "stdout", "text": "you predicted 'down': right"}]}
    closing = {"cell_type": "code", "execution_count": 5, "outputs": [], "source": "assert all(exercise_results)",
               "metadata": {"tags": ["solution"], "lessonlib": {"stub": "# assert all(exercise_results)\n"}}}
    widgets = {"application/vnd.jupyter.widget-state+json": {"state": {"abc": {"model_name": "IntSliderModel"}}}}
    nb = {"cells": [plain, solution, verdict, closing], "metadata": {"widgets": widgets, "kernelspec": {}},
          "nbformat": 4, "nbformat_minor": 5}
    student = student_version(nb)
    assert "widgets" not in student["metadata"] and "kernelspec" in student["metadata"]  # no instructor's state
    assert "widgets" in nb["metadata"]
    assert student["cells"][2]["outputs"] == [] and student["cells"][2]["execution_count"] is None  # no answers shown
    assert student["cells"][3]["source"].startswith("#") and student["cells"][3]["metadata"]["tags"] == []
    text = json.dumps(student)
    assert "scale * (eps_c - eps_u)" not in text and "NotImplementedError" in text
    assert student["cells"][1]["outputs"] == [] and student["cells"][1]["metadata"]["tags"] == ["exercise"]
    assert student["cells"][0] == plain and "scale * (eps_c" in json.dumps(nb)  # the original is untouched
    del solution["metadata"]["lessonlib"]
    with pytest.raises(ValueError, match="no metadata.lessonlib.stub"):
        student_version(nb)
    solution["metadata"]["lessonlib"] = {"stub": "def cfg(eps_u, eps_c, scale):\n    raise NotImplementedError\n"}
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "07_cfg.ipynb").write_text(json.dumps(nb))
    assert main(["--student", str(tmp_path / "out"), "--notebooks", str(tmp_path / "src")]) == 0
    assert "NotImplementedError" in (tmp_path / "out" / "07_cfg.ipynb").read_text()
    with pytest.raises(SystemExit, match="another folder"):
        main(["--student", str(tmp_path / "src"), "--notebooks", str(tmp_path / "src")])


def test_every_lesson_has_two_or_more_checked_exercises_and_a_student_version():
    import json
    import re
    from pathlib import Path

    from lessonlib.exercises import student_version

    lessons = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert len(lessons) >= 12
    used = {}
    for path in lessons:
        nb = json.loads(path.read_text())
        code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        names = re.findall(r'check(?:_prediction)?\(\s*"(\w+)"', code)
        assert len(set(names)) >= 2, (path.name, names)  # two to four exercises per lesson (issue 20)
        for name in names:
            exercise = EXERCISES.get(name) or PREDICTIONS.get(name)
            assert exercise is not None, (path.name, name)
            assert path.name.startswith(exercise.lesson), (path.name, name, exercise.lesson)
            used[name] = path.name
        solutions = [c for c in nb["cells"] if "solution" in c["metadata"].get("tags", [])]
        student = student_version(nb)  # refuses a solution cell without a stub
        for original, cell in zip(nb["cells"], student["cells"]):
            if original in solutions:
                assert cell["source"] != original["source"] and "solution" not in cell["metadata"]["tags"]
        assert "NotImplementedError" in json.dumps(student) or not any(n in EXERCISES for n in names), path.name
    assert set(used) == set(EXERCISES) | set(PREDICTIONS)  # every exercise is asked somewhere


def test_every_lesson_asks_for_a_whole_computation_of_four_lines_or_more():
    import ast
    import json
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        lengths = {}
        for cell in json.loads(path.read_text())["cells"]:
            if "solution" not in cell["metadata"].get("tags", []):
                continue
            source = "".join(cell["source"])
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.FunctionDef):
                    body = source.splitlines()[node.body[0].lineno - 1: node.end_lineno]
                    lengths[node.name] = sum(bool(ln.strip()) and not ln.strip().startswith("#") for ln in body)
        assert max(lengths.values(), default=0) >= 4, (path.name, lengths)


def test_a_builder_exercise_says_when_no_module_comes_back():
    result = check("zero_conv", lambda channels: torch.zeros(channels))
    assert not result.passed and "must return a torch.nn.Module" in result.message


def test_the_instructors_guide_covers_every_lesson_and_exercise_and_the_readme_links_it():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    guide = (root / "docs" / "instructors.md").read_text()
    assert "docs/instructors.md" in (root / "README.md").read_text()
    for path in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        assert f"### {path.name[:2]} · " in guide, path.name  # a section per lesson
    for name in list(EXERCISES) + list(PREDICTIONS):
        assert f"`{name}`" in guide, name  # every exercise is described
    assert "RUNTIME_" not in guide  # every runtime was filled in from a measurement


def test_checks_run_where_the_lesson_calls_them_and_name_the_stubs_arguments():
    def no_enable_grad(encoder, text_emb, x):  # fine at the top level, breaks inside the sampler's no_grad loop
        x = x.detach().requires_grad_(True)
        cos = F.cosine_similarity(encoder(x), text_emb.expand(len(x), -1), dim=-1)
        return torch.autograd.grad(cos.sum(), x)[0]

    assert not check("cosine_grad", no_enable_grad).passed

    def on_the_callers_tensor(encoder, text_emb, x):
        with torch.enable_grad():
            x.requires_grad_(True)
            F.cosine_similarity(encoder(x), text_emb.expand(len(x), -1), dim=-1).sum().backward()
            return x.grad.clone()

    result = check("cosine_grad", on_the_callers_tensor)
    assert not result.passed and "caller's tensor" in result.message
    result = check("cfg", lambda eps_c, eps_u, s: eps_u + s * (eps_c - eps_u))  # the lesson's own argument names
    assert not result.passed and "(eps_u, eps_c, scale)" in result.message and "stub's first line" in result.message

    def frozen(channels):
        conv = torch.nn.Conv2d(channels, channels, 1).requires_grad_(False)
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
        return conv

    result = check("zero_conv", frozen)
    assert not result.passed and "no trainable parameters" in result.message
    assert not check("zero_conv", lambda channels: torch.nn.Conv2d(channels, channels, 3, padding=1).apply(
        lambda m: [torch.nn.init.zeros_(p) for p in m.parameters()])).passed  # a 3x3 kernel moves differently
