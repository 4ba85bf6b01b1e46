"""Exercises a student does and a machine checks (issue 20): ``check(name, answer)`` and ``check_prediction``.

Two kinds:

- *implement*: the student writes a small function the lesson used from ``lessonlib``; :func:`check` runs it
  against the reference on random and edge-case inputs (the lesson's shapes and dtypes) and prints what failed,
  expected against got, and a hint that points at the lesson's equation. A stub from :func:`stub` raises
  ``NotImplementedError`` with the exercise's task, and :func:`check` says so instead of failing obscurely.
- *predict, then measure*: the student writes a prediction before running a sweep; :func:`check_prediction`
  compares it with the number the notebook measured and explains the gap.

Neither ever raises an AssertionError at the student: both return a :class:`CheckResult` (``passed``,
``message``) and print the message. References are the library's own functions or short formulas
(``EXERCISES[name].reference``); a solution that calls the reference, or one of the library functions that compute
the answer (``Exercise.shortcuts``), is refused with a message naming it. The notebooks' solution cells are tagged
``solution`` so that a student version can drop them.

The package: :mod:`.engine` (the checker and its messages), :mod:`.implement` and :mod:`.predict` (every lesson's
exercises), :mod:`.cases` (the inputs and small fixed models they are checked on), :mod:`.student`
(``python -m lessonlib.exercises --student DIR``).
"""
from __future__ import annotations

from typing import Any, Callable

from .engine import CheckResult, Exercise, Prediction, judge_prediction, make_stub, run_check
from .implement import EXERCISES
from .predict import PREDICTIONS
from .student import SOLUTION_TAG, main, student_version

__all__ = ["Exercise", "CheckResult", "EXERCISES", "check", "stub", "Prediction", "PREDICTIONS",
           "check_prediction", "student_version", "main", "SOLUTION_TAG"]


def _exercise(name: str) -> Exercise:
    if name not in EXERCISES:
        raise ValueError(f"no exercise named {name!r}; the exercises are {sorted(EXERCISES)}.")
    return EXERCISES[name]


def stub(name: str) -> Callable[..., Any]:
    """The function a student starts from: it raises NotImplementedError with the exercise's task."""
    return make_stub(name, _exercise(name))


def check(name: str, answer: Callable[..., Any]) -> CheckResult:
    """Run the student's function on the exercise's inputs against the reference; print and return the verdict."""
    return run_check(_exercise(name), answer)


def check_prediction(name: str, answer: Any, measured: Any) -> CheckResult:
    """Compare a prediction written before the measurement with what the notebook measured; explain either way.

    For a choice, ``measured`` is the right choice (computed by the notebook from its own numbers); for a number,
    the measured number, and the prediction passes within the exercise's tolerance.
    """
    if name not in PREDICTIONS:
        raise ValueError(f"no prediction exercise named {name!r}; they are {sorted(PREDICTIONS)}.")
    return judge_prediction(PREDICTIONS[name], answer, measured)
