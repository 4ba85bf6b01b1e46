"""One dependency list (pyproject.toml); environment.yml (the conda route) agrees with it; the build is clean."""
import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch", "open_clip_torch": "open-clip-torch"}  # conda-forge spells these differently


def _requirements(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(>=\s*[\w.]+)?\s*", line)
        assert m, f"cannot read the requirement {line!r}"
        out[m.group(1).lower()] = (m.group(2) or "").replace(" ", "")
    return out


def test_environment_yml_has_every_runtime_dependency_with_pyprojects_bounds():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _requirements(project["dependencies"] + project["optional-dependencies"]["dev"])
    text = (ROOT / "environment.yml").read_text()
    conda_lines = [ln.strip()[2:] for ln in text.split("dependencies:", 1)[1].splitlines()
                   if re.match(r"\s+- [A-Za-z]", ln) and not ln.strip().startswith(("- pip", "- python"))]
    conda = _requirements(conda_lines)
    bounds = {CONDA_NAMES.get(k, k).lower(): v for k, v in wanted.items()}
    runtime = {CONDA_NAMES.get(k, k).lower() for k in _requirements(project["dependencies"])}
    assert runtime <= set(conda), f"runtime dependencies missing from environment.yml: {runtime - set(conda)}"
    assert set(conda) <= set(bounds), f"environment.yml has packages pyproject does not: {set(conda) - set(bounds)}"
    assert {k: conda[k] for k in conda} == {k: bounds[k] for k in conda}  # the same lower bounds
    assert '-e ".[dev]"' in text  # and lessonlib itself, editable
