"""The checkers can pass and can fail: for every exercise the reference passes, the stub fails with the stub's
message, and a plausible wrong answer fails with a message that says what went wrong (issue 20)."""
import pytest
import torch
import torch.nn.functional as F

from lessonlib.exercises import EXERCISES, PREDICTIONS, check, check_prediction, stub


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
}


def _weight_only_zero(channels):
    conv = torch.nn.Conv2d(channels, channels, 1)
    torch.nn.init.zeros_(conv.weight)  # the bias forgotten
    return conv


def test_every_exercise_has_a_tested_wrong_answer():
    assert set(WRONG) == set(EXERCISES)


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_the_reference_passes_the_stub_and_a_wrong_answer_fail(name, capsys):
    assert check(name, EXERCISES[name].reference).passed
    assert "correct on all" in capsys.readouterr().out
    result = check(name, stub(name))
    assert not result.passed and "not written yet" in result.message and EXERCISES[name].task in result.message
    wrong, says = WRONG[name]
    result = check(name, wrong)
    assert not result.passed and says in result.message, result.message
    assert "AssertionError" not in result.message


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
