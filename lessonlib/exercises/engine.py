"""The checker engine of :mod:`lessonlib.exercises`: the two kinds of exercise, how an answer is judged, and the
messages a student reads (expected, got, a hint; never a bare AssertionError)."""
from __future__ import annotations

import contextlib
import importlib
import inspect
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

__all__ = ["CheckResult", "Exercise", "Prediction", "run_check", "judge_prediction", "make_stub"]


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
    # how a function is called on one case's keyword arguments; None: answer(**kwargs). An exercise whose answer
    # is not a tensor function (e.g. one that builds a module) turns it into a tensor here.
    run: Callable[[Callable[..., Any], dict], Any] | None = None
    # call the function inside torch.no_grad(), where the lesson calls it (a sampler's loop)
    in_no_grad: bool = False
    # the library functions that compute the answer (dotted names): a solution that calls one, or the reference,
    # is refused, so that the exercise asks for the computation and not for a call
    shortcuts: tuple[str, ...] = ()

    def call(self, fn: Callable[..., Any], kwargs: dict) -> Any:
        with torch.no_grad() if self.in_no_grad else contextlib.nullcontext():
            return fn(**kwargs) if self.run is None else self.run(fn, kwargs)


def _shortcut_codes(exercise: Exercise) -> dict[Any, str]:
    """The code objects of the exercise's shortcuts and of its reference, each with the name a student would use."""
    codes = {}
    for dotted in exercise.shortcuts:
        module, _, attr = dotted.rpartition(".")
        fn = inspect.unwrap(getattr(importlib.import_module(module), attr))
        if not hasattr(fn, "__code__"):
            raise TypeError(f"exercise {exercise.name!r}: shortcut {dotted} is not a Python function.")
        codes[fn.__code__] = dotted
    reference = inspect.unwrap(exercise.reference)
    if hasattr(reference, "__code__"):
        codes.setdefault(reference.__code__, f"{reference.__module__}.{reference.__qualname__}")
    return codes


@contextlib.contextmanager
def _watching(codes: dict[Any, str]):
    """Record the first call, however it was imported, of any function whose code object is in ``codes``."""
    called: list[str] = []

    def profile(frame, event, arg):
        if event == "call" and not called and frame.f_code in codes:
            called.append(codes[frame.f_code])

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield called
    finally:
        sys.setprofile(previous)


def make_stub(name: str, exercise: Exercise) -> Callable[..., Any]:
    """The function a student starts from: it raises NotImplementedError with the exercise's task."""

    def not_yet(*args, **kwargs):
        raise NotImplementedError(f"exercise '{name}' (lesson {exercise.lesson}): write {exercise.task}.")
    return not_yet


def _describe(x: Any) -> str:
    if torch.is_tensor(x):
        flat = x.detach().flatten().double()
        head = ", ".join(f"{v:.4g}" for v in flat[:3].tolist())
        return f"tensor of shape {tuple(x.shape)}, dtype {x.dtype}, first values [{head}{', ...' if len(flat) > 3 else ''}]"
    return f"{type(x).__name__} {x!r}"[:200]


def _report(passed: bool, message: str) -> CheckResult:
    print(message)
    return CheckResult(passed, message)


def _type_error_message(name: str, exercise: Exercise, answer: Callable[..., Any], exc: TypeError,
                        description: str) -> str:
    """A TypeError from calling the function with the stub's argument names says so; any other, like an exception."""
    expected = list(exercise.cases()[0][1]) if exercise.run is None else None
    try:
        theirs = list(inspect.signature(answer).parameters)
    except (TypeError, ValueError):
        theirs = None
    if expected is not None and theirs is not None and theirs != expected:
        return (f"'{name}' takes the arguments ({', '.join(theirs)}), but the checker calls it with the stub's names "
                f"as keywords: ({', '.join(expected)}). Keep the stub's first line as it is.")
    return f"'{name}' raised TypeError: {exc}\n  on the input: {description}\n  hint: {exercise.hint}"


def run_check(exercise: Exercise, answer: Callable[..., Any]) -> CheckResult:
    """Run the student's function on the exercise's inputs against the reference; print and return the verdict."""
    name = exercise.name
    if not callable(answer):
        return _report(False, f"'{name}': pass your function itself (e.g. check('{name}', {name})), "
                              f"not {type(answer).__name__}.")
    cases, shortcuts = exercise.cases(), _shortcut_codes(exercise)
    for description, kwargs in cases:
        inputs = {k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()}
        expected = exercise.call(exercise.reference, kwargs)
        try:
            with _watching(shortcuts) as called:
                got = exercise.call(answer, inputs)
        except NotImplementedError:
            return _report(False, f"'{name}' is not written yet: replace the `raise NotImplementedError` in its cell "
                                  f"with your code ({exercise.task}).")
        except TypeError as exc:
            return _report(False, _type_error_message(name, exercise, answer, exc, description))
        except Exception as exc:  # the student's code failed: say on what, and how
            return _report(False, f"'{name}' raised {type(exc).__name__}: {exc}\n  on the input: {description}\n"
                                  f"  hint: {exercise.hint}")
        if called:
            return _report(False, f"'{name}' calls {called[0]}, the library's own function for what this exercise "
                                  "asks: write the computation itself (torch operations are fine).\n"
                                  f"  hint: {exercise.hint}")
        if any(torch.is_tensor(v) and (v.requires_grad or v.grad is not None) for v in inputs.values()):
            return _report(False, f"'{name}' turned on requires_grad (or left a .grad) on the caller's tensor on: "
                                  f"{description}; take the gradient with respect to x.detach().requires_grad_(), a "
                                  "new tensor, so that the sampler's own tensors stay untouched.")
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


@dataclass(frozen=True)
class Prediction:
    """A *predict, then measure* exercise: a question, and how to judge a numeric answer against the measurement."""

    name: str
    lesson: str
    question: str
    why: str  # the explanation shown with the verdict
    relative_tolerance: float = 0.25
    choices: tuple[str, ...] = field(default_factory=tuple)  # for a choice: the allowed answers
    absolute_tolerance: float | None = None  # for a number: pass within this distance instead (e.g. an accuracy)


def judge_prediction(p: Prediction, answer: Any, measured: Any) -> CheckResult:
    """Compare a prediction written before the measurement with what the notebook measured; explain either way.

    For a choice, ``measured`` is the right choice (computed by the notebook from its own numbers); for a number,
    the measured number, and the prediction passes within the exercise's relative tolerance.
    """
    name = p.name
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
    if p.absolute_tolerance is not None:
        close, margin = abs(answer - measured) <= p.absolute_tolerance, f"{p.absolute_tolerance:g} of it"
    else:
        close = abs(answer - measured) <= p.relative_tolerance * abs(measured)
        margin = f"{p.relative_tolerance:.0%} of it"
    verdict = "within" if close else "outside"
    return _report(close, f"'{name}': you predicted {answer:g}; the notebook's value is {measured:.3g}, {verdict} "
                          f"{margin}. Why: {p.why}.")
