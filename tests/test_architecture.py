"""The package's shape (DESIGN.md section 2): imports point down, the tower stays low, command lines stay on top.

Floors are counted from the import graph of module-level ``lessonlib`` imports, read with ``ast``: a module
that imports no other lessonlib module is on floor 0, any other sits one floor above the highest module it
imports. The package's ``__init__`` (``lessonlib.device``) is left out: it imports nothing from lessonlib.
"""
import ast
import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lessonlib"
COMMAND_LINES = {"lessonlib.bench", "lessonlib.train", "lessonlib.run_all", "lessonlib.publish", "lessonlib.site"}
MAX_FLOOR = 5


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, *, top_level_only: bool) -> set[str]:
    """lessonlib modules that ``name`` imports (at module level only, or anywhere)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m in MODULES and m not in (name, "lessonlib")}


@cache
def floor(name: str, _stack: tuple = ()) -> int:
    if name in _stack:
        raise AssertionError(f"import cycle: {' -> '.join(_stack + (name,))}")
    deps = _imports(name, top_level_only=True)
    return 1 + max((floor(d, _stack + (name,)) for d in deps), default=-1)


def test_the_import_tower_is_at_most_five_floors():
    floors = {m: floor(m) for m in MODULES}
    top = max(floors.values())
    tower = sorted(floors.items(), key=lambda kv: kv[1])
    assert top <= MAX_FLOOR, f"{top} floors: {tower}"


@pytest.mark.parametrize("name", sorted(set(MODULES) - COMMAND_LINES))
def test_no_library_module_imports_a_command_line(name):
    assert not _imports(name, top_level_only=False) & COMMAND_LINES


def test_imports_sit_at_the_top_of_modules():
    """Inside a function only for an optional dependency or a cycle; none of lessonlib's own modules."""
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                inner = [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
                assert all(isinstance(n, ast.ImportFrom) and n.level == 0 and n.module == "huggingface_hub"
                           for n in inner), f"{name}.{node.name} imports inside the function"


def test_the_abstractions_are_named_once():
    import lessonlib.guidance as guidance
    import lessonlib.types as types

    assert guidance.EpsFn is types.EpsFn and types.NULL_CLASS == -1
    for name, path in MODULES.items():  # nobody else assigns them
        if name != "lessonlib.types":
            targets = {t.id for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Assign)
                       for t in n.targets if isinstance(t, ast.Name)}
            assert not targets & {"EpsFn", "GradFn", "CondModel", "NULL_CLASS"}, name


MAX_MODULE_LINES = 500
MAX_LESSON_LINE = 120
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_no_module_is_over_five_hundred_lines():
    long = {name: n for name, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"split these modules: {long}"


def test_the_exact_toy_imports_only_the_floor_below_it():
    """lesson 01's toy is the course's mathematical floor: no training loop, no variants, no networks."""
    assert _imports("lessonlib.toy", top_level_only=False) <= {
        "lessonlib.schedules", "lessonlib.diffusion", "lessonlib.types"}


def test_no_lesson_code_line_is_over_120_characters():
    long = []
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            if cell["cell_type"] == "code":
                long += [f"{path.name} cell {i}: {len(line)}" for line in "".join(cell["source"]).splitlines()
                         if len(line) > MAX_LESSON_LINE]
    assert not long, f"wrap these lines: {long}"


def test_no_markdown_cell_is_a_wall_of_more_than_250_words():
    """Issue 42: a long reading is split under headings, or becomes a figure and a short reading of it."""
    walls = []
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            words = len(re.findall(r"\S+", "".join(cell["source"])))
            if cell["cell_type"] == "markdown" and words > 250:
                walls.append(f"{path.name} cell {i}: {words} words")
    assert not walls, f"split these cells: {walls}"


def test_the_lessons_code_is_formatted_as_ci_checks_it():
    """CI runs `ruff format --check notebooks` before pytest; the same check here fails a local run first."""
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]' brings it)")
    done = subprocess.run([ruff, "format", "--check", str(NOTEBOOKS)], capture_output=True, text=True)
    assert done.returncode == 0, f"run `ruff format notebooks`:\n{done.stdout[-2000:]}{done.stderr[-500:]}"
