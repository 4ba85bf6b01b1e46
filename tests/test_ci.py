"""What an instructor's fork relies on: the workflow runs .ci/run's steps, the citation file is valid CFF 1.2,
the version has one source, and every notebook's Colab badge and install cell point at the course's home."""
import datetime
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest
import yaml

import lessonlib
from lessonlib.home import Home, home, parse_source
from lessonlib.publish import header_problems, install_cell_source, write_headers

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "tests.yml"


def _ci_run_steps() -> list[str]:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    return [ln.split("# step")[0].strip() for ln in lines if "# step" in ln and not ln.lstrip().startswith("#")]


def test_the_workflow_runs_the_same_steps_as_ci_run_in_the_same_order():
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["tests"]["steps"]
    ci_steps = [s["run"].strip() for s in steps if str(s.get("name", "")).startswith("ci: ")]
    assert ci_steps == _ci_run_steps() and len(ci_steps) >= 5


def test_the_workflow_covers_both_pythons_and_keeps_notebooks_on_failure():
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["tests"]
    assert job["strategy"]["matrix"]["python-version"] == ["3.10", "3.12"]
    upload = [s for s in job["steps"] if "upload-artifact" in str(s.get("uses", ""))]
    assert upload and upload[0]["if"] == "failure()"


@pytest.mark.skipif(shutil.which("actionlint") is None, reason="actionlint is not installed (pip install -e '.[ci]')")
def test_actionlint_accepts_the_workflow_and_rejects_a_broken_one(tmp_path):
    ok = subprocess.run(["actionlint", str(WORKFLOW)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on: ubuntu-latest", "runs-on: ubuntu-latest\n    timeout-minutes: soon"))
    bad = subprocess.run(["actionlint", str(broken)], capture_output=True, text=True)
    assert bad.returncode != 0 and "timeout-minutes" in bad.stdout


def test_citation_file_is_valid_cff_1_2_and_matches_the_package():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    for key in ("message", "title", "authors"):  # required by CFF 1.2
        assert cff.get(key), f"CITATION.cff lacks {key}"
    assert all(isinstance(a, dict) and (a.get("name") or a.get("family-names")) for a in cff["authors"])
    assert cff["version"] == lessonlib.__version__ and cff["license"] == "MIT"
    assert cff.get("type", "software") in ("software", "dataset")
    if "date-released" in cff:
        datetime.date.fromisoformat(str(cff["date-released"]))
    assert cff["repository-code"] == home().repository


def test_the_version_has_one_source():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and 'attr = "lessonlib.__version__"' in pyproject
    project_table = re.search(r"^\[project\]$(.*?)^\[", pyproject, re.M | re.S).group(1)
    assert not re.search(r"^version\s*=", project_table, re.M)  # no second, hand-written version
    assert f"## {lessonlib.__version__.split('.dev')[0]}" in (ROOT / "CHANGELOG.md").read_text()
    assert 'license = "MIT"' in pyproject and (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_every_notebook_header_points_at_the_course_home():
    assert header_problems(home()) == []


def test_a_stale_header_is_reported_and_rewritten(tmp_path):
    src = sorted((ROOT / "notebooks").glob("0*.ipynb"))[0]
    shutil.copy(src, tmp_path / src.name)
    moved = Home("someone", "their-fork", "v9.9")
    problems = header_problems(moved, tmp_path)
    assert len(problems) == 2 and "badge" in problems[0] and "someone/their-fork" in problems[1]
    assert write_headers(moved, tmp_path) == [src.name] and header_problems(moved, tmp_path) == []
    cells = nbformat.read(tmp_path / src.name, as_version=4).cells
    assert "blob/v9.9/notebooks/" in cells[0].source and cells[1].source == install_cell_source(moved)
    assert "nbval-skip" in cells[1].metadata["tags"]


def test_the_home_is_one_github_url_with_a_ref():
    where = parse_source("https://github.com/owner/repo/tree/v1.2.0")
    assert (where.repository, where.ref) == ("https://github.com/owner/repo", "v1.2.0")
    assert where.pip_requirement() == "lessonlib @ git+https://github.com/owner/repo@v1.2.0"
    with pytest.raises(ValueError, match="OWNER/REPO/tree/REF"):
        parse_source("https://gitlab.com/owner/repo")
