"""One dependency list: environment.yml (the conda route) names what pyproject.toml names, with the same bounds."""
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


def test_environment_yml_lists_every_pyproject_dependency_with_its_bound():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _requirements(project["dependencies"] + project["optional-dependencies"]["dev"])
    text = (ROOT / "environment.yml").read_text()
    conda_lines = [ln.strip()[2:] for ln in text.split("dependencies:", 1)[1].splitlines()
                   if re.match(r"\s+- [A-Za-z]", ln) and not ln.strip().startswith(("- pip", "- python"))]
    conda = _requirements(conda_lines)
    expected = {CONDA_NAMES.get(k, k).lower(): v for k, v in wanted.items()}
    assert conda == expected
    assert '-e ".[dev]"' in text  # and lessonlib itself, editable
