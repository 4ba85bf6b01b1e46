"""Exercises a student does and a machine checks (issue 20): ``check(name, answer)`` and ``check_prediction``.

Two kinds:

- *implement*: the student writes a small function the lesson used from ``lessonlib``; :func:`check` runs it
  against the reference on random and edge-case inputs (the lesson's shapes and dtypes) and prints what failed,
  expected against got, and a hint that points at the lesson's equation. A stub from :func:`stub` raises
  ``NotImplementedError`` with the exercise's task, and :func:`check` says so instead of failing obscurely.
- *predict, then measure*: the student writes a prediction before running a sweep; :func:`check_prediction`
  compares it with the number the notebook measured and explains the gap.

Neither ever raises an AssertionError at the student: both return a :class:`CheckResult` (``passed``,
``message``) and print the message. Reference solutions are the library's own functions (``EXERCISES[name]
.reference``); the notebooks' solution cells are tagged ``solution`` so that a student version can drop them.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from .flow import eps_from_velocity
from .guidance import combine
from .variants import parallel_part

__all__ = ["Exercise", "CheckResult", "EXERCISES", "check", "stub", "Prediction", "PREDICTIONS",
           "check_prediction", "student_version", "main"]


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed


@dataclass(frozen=True)
class Exercise:
    """One *implement* exercise: the task, the reference, the inputs it is checked on, and the hint."""

    name: str
    lesson: str
    task: str  # what to write, shown by the stub
    reference: Callable[..., Tensor]
    cases: Callable[[], list[tuple[str, dict]]]  # (description, keyword arguments)
    hint: str
    atol: float = 1e-5
    rtol: float = 1e-4


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- references: written in the lesson's notation on plain tensors ------------------------------------------------

def _expand(a: Tensor, like: Tensor) -> Tensor:
    """(B,) per-sample values broadcast over a (B, ...) tensor."""
    return a.reshape(-1, *([1] * (like.ndim - 1))).to(like)


def _score_from_eps(eps: Tensor, abar: Tensor) -> Tensor:
    return -eps / (1 - _expand(abar, eps)).sqrt()


def _ddim_step(x_t: Tensor, eps: Tensor, abar_t: Tensor, abar_prev: Tensor) -> Tensor:
    a_t, a_prev = _expand(abar_t, x_t), _expand(abar_prev, x_t)
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps


def _cfg(eps_u: Tensor, eps_c: Tensor, scale: float) -> Tensor:
    return combine(eps_u, [(eps_c, scale)])


def _eps_from_velocity(x_t: Tensor, v: Tensor, t: Tensor) -> Tensor:
    return eps_from_velocity(x_t, t, v)


# ---- the inputs each is checked on ----------------------------------------------------------------------------------

def _score_cases():
    g = _gen(0)
    return [("a batch of 2-D toy points (B, 2), abar in (0, 1)",
             {"eps": torch.randn(6, 2, generator=g), "abar": torch.rand(6, generator=g) * 0.98 + 0.01}),
            ("MNIST-shaped (B, 1, 28, 28) with one abar per image", {"eps": torch.randn(3, 1, 28, 28, generator=g),
                                                                  "abar": torch.tensor([0.05, 0.5, 0.95])}),
            ("almost clean, abar = 0.9999 (the score is large)", {"eps": torch.randn(2, 2, generator=g),
                                                                  "abar": torch.tensor([0.9999, 0.9999])})]


def _ddim_cases():
    g = _gen(1)
    x, e = torch.randn(4, 1, 28, 28, generator=g), torch.randn(4, 1, 28, 28, generator=g)
    return [("a middle step, abar_t = 0.3 -> abar_prev = 0.5", {"x_t": x, "eps": e, "abar_t": torch.full((4,), 0.3),
                                                                "abar_prev": torch.full((4,), 0.5)}),
            ("a different step per image", {"x_t": x, "eps": e, "abar_t": torch.tensor([0.01, 0.2, 0.6, 0.9]),
                                            "abar_prev": torch.tensor([0.05, 0.4, 0.8, 0.99])}),
            ("the last step, to the clean image (abar_prev = 1)", {"x_t": x, "eps": e,
                                                                    "abar_t": torch.full((4,), 0.9),
                                                                    "abar_prev": torch.ones(4)})]


def _cfg_cases():
    g = _gen(2)
    u, c = torch.randn(3, 1, 28, 28, generator=g), torch.randn(3, 1, 28, 28, generator=g)
    return [(f"scale {s:g}", {"eps_u": u, "eps_c": c, "scale": s}) for s in (3.0, 1.0, 0.0, 7.5)]


def _parallel_cases():
    g = _gen(3)
    d, c = torch.randn(4, 1, 28, 28, generator=g), torch.randn(4, 1, 28, 28, generator=g)
    return [("a batch of MNIST-shaped x0 predictions", {"d": d, "c": c}),
            ("images of very different brightness (per-image projections)", {"d": d, "c": c * torch.tensor(
                [0.1, 1.0, 10.0, 100.0]).reshape(4, 1, 1, 1)}),
            ("d already parallel to c", {"d": 2.5 * c, "c": c})]


def _velocity_cases():
    g = _gen(4)
    x, v = torch.randn(3, 1, 28, 28, generator=g), torch.randn(3, 1, 28, 28, generator=g)
    return [("one t per image", {"x_t": x, "v": v, "t": torch.tensor([0.1, 0.5, 0.9])}),
            ("pure noise, t = 1 (then eps is x_t itself)", {"x_t": x, "v": v, "t": torch.ones(3)})]


EXERCISES: dict[str, Exercise] = {e.name: e for e in [
    Exercise("score_from_eps", "01", "score_from_eps(eps, abar): the score of the noisy data from the noise "
             "prediction; abar has one value per sample, shape (B,)", _score_from_eps, _score_cases,
             "lesson 01, the score-noise identity: score = -eps / sqrt(1 - abar_t); abar is (B,), so reshape it to "
             "broadcast over the other dimensions"),
    Exercise("ddim_step", "02", "ddim_step(x_t, eps, abar_t, abar_prev): one deterministic DDIM step (eta = 0)",
             _ddim_step, _ddim_cases,
             "lesson 02: x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), then "
             "x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev) eps; the new noise level is abar_prev's"),
    Exercise("cfg", "07", "cfg(eps_u, eps_c, scale): classifier-free guidance's combination", _cfg, _cfg_cases,
             "lesson 07: eps_u + s (eps_c - eps_u), so that s = 1 is the conditional model and s = 0 the "
             "unconditional one (the (1 + w) eps_c - w eps_u convention uses w = s - 1)"),
    Exercise("parallel_part", "11", "parallel_part(d, c): the part of d parallel to c, per sample", parallel_part,
             _parallel_cases,
             "lesson 11 (APG): (<d, c> / <c, c>) c with the sums over every dimension except the batch one, one "
             "coefficient per sample"),
    Exercise("eps_from_velocity", "12", "eps_from_velocity(x_t, v, t): the noise prediction a velocity implies on "
             "the linear path x_t = (1 - t) x0 + t eps", _eps_from_velocity, _velocity_cases,
             "lesson 12's table: eps_hat = x_t + (1 - t) v_hat (x0_hat = x_t - t v_hat)"),
]}


def stub(name: str) -> Callable[..., Any]:
    """The function a student starts from: it raises NotImplementedError with the exercise's task."""
    exercise = _exercise(name)

    def not_yet(*args, **kwargs):
        raise NotImplementedError(f"exercise '{name}' (lesson {exercise.lesson}): write {exercise.task}.")
    return not_yet


def _exercise(name: str) -> Exercise:
    if name not in EXERCISES:
        raise ValueError(f"no exercise named {name!r}; the exercises are {sorted(EXERCISES)}.")
    return EXERCISES[name]


def _describe(x: Any) -> str:
    if torch.is_tensor(x):
        flat = x.detach().flatten().double()
        head = ", ".join(f"{v:.4g}" for v in flat[:3].tolist())
        return f"tensor of shape {tuple(x.shape)}, dtype {x.dtype}, first values [{head}{', ...' if len(flat) > 3 else ''}]"
    return f"{type(x).__name__} {x!r}"[:200]


def _report(passed: bool, message: str) -> CheckResult:
    print(message)
    return CheckResult(passed, message)


def check(name: str, answer: Callable[..., Any]) -> CheckResult:
    """Run the student's function on the exercise's inputs against the reference; print and return the verdict."""
    exercise = _exercise(name)
    if not callable(answer):
        return _report(False, f"'{name}': pass your function itself (e.g. check('{name}', {name})), "
                              f"not {type(answer).__name__}.")
    cases = exercise.cases()
    for description, kwargs in cases:
        inputs = {k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()}
        expected = exercise.reference(**kwargs)
        try:
            got = answer(**inputs)
        except NotImplementedError:
            return _report(False, f"'{name}' is not written yet: replace the `raise NotImplementedError` in its cell "
                                  f"with your code ({exercise.task}).")
        except Exception as exc:  # the student's code failed: say on what, and how
            return _report(False, f"'{name}' raised {type(exc).__name__}: {exc}\n  on the input: {description}\n"
                                  f"  hint: {exercise.hint}")
        if any(torch.is_tensor(v) and not torch.equal(v, kwargs[k]) for k, v in inputs.items()):
            return _report(False, f"'{name}' changed one of its inputs in place on: {description}; compute a new "
                                  "tensor instead (no +=, no .mul_() on the arguments).")
        if not torch.is_tensor(got):
            return _report(False, f"'{name}' returned {_describe(got)} on: {description}; it should return a tensor "
                                  f"like {_describe(expected)}.")
        if got.shape != expected.shape:
            return _report(False, f"'{name}' returned shape {tuple(got.shape)} on: {description}; expected "
                                  f"{tuple(expected.shape)}.\n  hint: {exercise.hint}")
        if got.dtype != expected.dtype:
            return _report(False, f"'{name}' returned dtype {got.dtype} on: {description}; expected {expected.dtype} "
                                  "(keep the inputs' dtype).")
        if not torch.allclose(got, expected, atol=exercise.atol, rtol=exercise.rtol):
            worst = int((got - expected).abs().flatten().argmax())
            return _report(False, f"'{name}' is wrong on: {description}\n  expected {_describe(expected)}\n"
                                  f"  got      {_describe(got)}\n  largest difference at flat index {worst}: "
                                  f"expected {expected.flatten()[worst].item():.6g}, got {got.flatten()[worst].item():.6g}"
                                  f"\n  hint: {exercise.hint}")
    return _report(True, f"'{name}' is correct on all {len(cases)} inputs ({'; '.join(d for d, _ in cases)}).")


# ---- predict, then measure --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prediction:
    """A *predict, then measure* exercise: a question, and how to judge a numeric answer against the measurement."""

    name: str
    lesson: str
    question: str
    why: str  # the explanation shown with the verdict
    relative_tolerance: float = 0.25
    choices: tuple[str, ...] = field(default_factory=tuple)  # for a choice: the allowed answers


PREDICTIONS: dict[str, Prediction] = {p.name: p for p in [
    Prediction("cfg_diversity_trend", "07", "As the CFG scale goes from 1 to 5, does within-class diversity go "
               "'up', 'down' or stay 'flat'?", "guidance tilts p(x | c) by p(c | x)^(s - 1), concentrating each "
               "class on the samples the classifier is surest about, so the samples of a class resemble each other "
               "more", choices=("up", "down", "flat")),
    Prediction("cfgpp_scale_at_40_steps", "11", "CFG++ with lambda = 0.6 and 40 DDIM steps equals CFG with a "
               "per-step scale; what is its largest value?", "w = lambda sbar_hi / (sbar_hi - sbar_lo) grows as the "
               "steps get shorter, so the same lambda guides harder with more steps"),
]}


def check_prediction(name: str, answer: Any, measured: Any) -> CheckResult:
    """Compare a prediction written before the measurement with what the notebook measured; explain either way.

    For a choice, ``measured`` is the right choice (computed by the notebook from its own numbers); for a number,
    the measured number, and the prediction passes within the exercise's relative tolerance.
    """
    if name not in PREDICTIONS:
        raise ValueError(f"no prediction exercise named {name!r}; they are {sorted(PREDICTIONS)}.")
    p = PREDICTIONS[name]
    if answer is None or answer is ...:
        return _report(False, f"'{name}': write your prediction first ({p.question}), then run the cell.")
    if p.choices:
        if answer not in p.choices:
            return _report(False, f"'{name}': answer one of {list(p.choices)}, got {answer!r}.")
        if measured not in p.choices:
            raise ValueError(f"the measured answer must be one of {list(p.choices)}, got {measured!r}.")
        verdict = "right" if answer == measured else f"not what the lesson measured ({measured})"
        return _report(answer == measured, f"'{name}': you predicted {answer!r}: {verdict}. Why: {p.why}.")
    if not isinstance(answer, (int, float)) or isinstance(answer, bool) or not math.isfinite(answer):
        return _report(False, f"'{name}': answer with a number, got {answer!r}.")
    close = abs(answer - measured) <= p.relative_tolerance * abs(measured)
    verdict = "within" if close else "outside"
    return _report(close, f"'{name}': you predicted {answer:g}; the lesson measured {measured:.3g}, {verdict} "
                          f"{p.relative_tolerance:.0%} of it. Why: {p.why}.")


# ---- the student version of a notebook -------------------------------------------------------------------------------

SOLUTION_TAG = "solution"


def student_version(notebook: dict) -> dict:
    """A copy of a notebook (nbformat JSON as a dict) with every cell tagged ``solution`` replaced by its stub.

    A solution cell keeps its stub in ``metadata["lessonlib"]["stub"]`` (e.g. the function's signature and
    ``raise NotImplementedError``); a solution cell without one is refused, so no solution leaks by omission.
    Outputs of the replaced cells are dropped.
    """
    out = copy.deepcopy(notebook)
    for i, cell in enumerate(out.get("cells", [])):
        tags = cell.get("metadata", {}).get("tags", [])
        if SOLUTION_TAG not in tags:
            continue
        stub_source = cell.get("metadata", {}).get("lessonlib", {}).get("stub")
        if stub_source is None:
            raise ValueError(f"cell {i} is tagged '{SOLUTION_TAG}' but has no metadata.lessonlib.stub: give it the "
                             "code the student starts from.")
        cell["source"] = stub_source
        cell["metadata"]["tags"] = [t for t in tags if t != SOLUTION_TAG] + ["exercise"]
        del cell["metadata"]["lessonlib"]["stub"]
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m lessonlib.exercises --student OUT``: write the student version of every lesson to OUT."""
    parser = argparse.ArgumentParser(prog="python -m lessonlib.exercises", description=main.__doc__)
    parser.add_argument("--student", required=True, help="the folder to write the student notebooks to")
    parser.add_argument("--notebooks", default="notebooks", help="the lessons' folder (default: notebooks)")
    args = parser.parse_args(argv)
    source, target = Path(args.notebooks), Path(args.student)
    lessons = sorted(source.glob("[0-9][0-9]_*.ipynb"))
    if not lessons:
        raise SystemExit(f"no lessons (NN_name.ipynb) in {source.resolve()}; give --notebooks.")
    if target.resolve() == source.resolve():
        raise SystemExit("--student must be another folder: the student version replaces the solutions.")
    target.mkdir(parents=True, exist_ok=True)
    for path in lessons:
        nb = student_version(json.loads(path.read_text()))
        (target / path.name).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        print(f"{path.name}: {sum('exercise' in c.get('metadata', {}).get('tags', []) for c in nb['cells'])} "
              f"exercise cell(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
