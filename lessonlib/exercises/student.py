"""The student version of the lessons: ``python -m lessonlib.exercises --student DIR``."""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

__all__ = ["SOLUTION_TAG", "student_version", "main"]


SOLUTION_TAG = "solution"


def student_version(notebook: dict) -> dict:
    """A copy of a notebook (nbformat JSON as a dict) with every cell tagged ``solution`` replaced by its stub.

    A solution cell keeps its stub in ``metadata["lessonlib"]["stub"]`` (e.g. the function's signature and
    ``raise NotImplementedError``); a solution cell without one is refused, so no solution leaks by omission.
    Every code cell's outputs are dropped too: the executed lesson shows each prediction's reference answer, the
    measurements it asks about and the checkers' verdicts, and so is the notebook's saved widget state. Replaced
    cells are tagged ``exercise``, except those
    whose stub is only a comment (the closing check, left for the instructor to uncomment).
    """
    out = copy.deepcopy(notebook)
    out.get("metadata", {}).pop("widgets", None)  # the instructor's widget state: the student's run makes its own
    for i, cell in enumerate(out.get("cells", [])):
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
        tags = cell.get("metadata", {}).get("tags", [])
        if SOLUTION_TAG not in tags:
            continue
        stub_source = cell.get("metadata", {}).get("lessonlib", {}).get("stub")
        if stub_source is None:
            raise ValueError(f"cell {i} is tagged '{SOLUTION_TAG}' but has no metadata.lessonlib.stub: give it the "
                             "code the student starts from.")
        cell["source"] = stub_source
        is_exercise = any(line.strip() and not line.lstrip().startswith("#") for line in stub_source.splitlines())
        cell["metadata"]["tags"] = [t for t in tags if t != SOLUTION_TAG] + (["exercise"] if is_exercise else [])
        del cell["metadata"]["lessonlib"]["stub"]
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
