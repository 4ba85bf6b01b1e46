"""A simulated Colab session: the course as a student meets it from the "Open in Colab" badge.

What is real: a fresh virtual environment that sees the packages Colab preinstalls (here: every package of the
environment running the tests, except lessonlib itself); the notebook's own install cell, run by the kernel
because a stub ``google.colab`` module is importable, with only the repository URL replaced by a ``file://``
git repository holding this working tree (pip clones it and builds a wheel, as it would from GitHub); no data
folder, no clone, an empty user cache; the checkpoints served by a local HTTP server standing in for the
course's public home. Lessons 02 and 07 then run to their closing assertions.

The data take the student's path too: on a machine without internet (CI) the embedded fallback, on one with
internet a download into the session's own cache.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from helpers import serve_folder

from lessonlib.home import home
from lessonlib.paths import REPO_ROOT

pytestmark = pytest.mark.slow

LESSONS = ["02_ddpm_ddim_mnist.ipynb", "07_classifier_free_guidance.ipynb"]
RUNNER = """
import json, sys
import nbformat
from nbclient import NotebookClient
path = sys.argv[1]
nb = nbformat.read(path, as_version=4)
NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": sys.argv[2]}}).execute()
nbformat.write(nb, path)
"""


def _git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"})


def _publishable_repository(target: Path) -> Path:
    """A git repository holding this working tree (tracked and untracked, not ignored) at the home's ref."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    _git("init", "-q", "-b", home().ref, cwd=target)
    _git("add", "-A", cwd=target)
    _git("commit", "-q", "-m", "snapshot", cwd=target)
    return target


def _colab_like_venv(root: Path) -> Path:
    """A fresh venv whose extra site directory links every package of this environment except lessonlib."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    preinstalled = root / "preinstalled"
    preinstalled.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if "lessonlib" in entry.name or entry.name.startswith(("pip", "_distutils_hack", "distutils-precedence")):
            continue
        (preinstalled / entry.name).symlink_to(entry)
    site = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "colab_preinstalled.pth").write_text(f"{preinstalled}\n")
    stub = root / "colab_stub" / "google" / "colab"  # "google" stays a namespace package (protobuf shares it)
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text('"""Stands in for Colab: imported at start-up, it makes the install cells run."""\n')
    (root / "colab_stub" / "sitecustomize.py").write_text("import google.colab  # as in Colab, imported at start-up\n")
    return venv


@pytest.fixture
def checkpoint_server(tmp_path):
    """The public home's raw files: a local HTTP server over a copy of data/checkpoints, counting requests."""
    root = tmp_path / "served"
    shutil.copytree(REPO_ROOT / "data" / "checkpoints", root)
    with serve_folder(root) as served:
        yield served


def _install_cell(nb: dict) -> tuple[int, str]:
    for i, cell in enumerate(nb["cells"]):
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and "google.colab" in source and "%pip install" in source:
            return i, source
    raise AssertionError("no Colab install cell in the notebook")


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to build the package from a git URL")
def test_lessons_02_and_07_run_in_a_simulated_colab_session(tmp_path, checkpoint_server):
    url, hits = checkpoint_server
    repository = _publishable_repository(tmp_path / "repository")
    venv = _colab_like_venv(tmp_path)
    content = tmp_path / "content"  # Colab's working directory: the notebook alone, no clone around it
    content.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LESSONLIB_", "VIRTUAL_ENV", "PYTHON"))}
    env.update(PATH=f"{venv / 'bin'}:{env['PATH']}", PYTHONPATH=str(tmp_path / "colab_stub"),
               LESSONLIB_CACHE=str(tmp_path / "cache"), LESSONLIB_CHECKPOINT_URL=url,
               HOME=str(tmp_path / "home"), TQDM_DISABLE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    for name in LESSONS:
        nb = json.loads((REPO_ROOT / "notebooks" / name).read_text())
        index, source = _install_cell(nb)
        assert home().pip_requirement() in source, f"{name}'s install cell does not install {home().pip_requirement()}"
        # file://localhost/...: the pip that python -m venv bundles rejects a URL without a host in a requirement
        local = source.replace(home().repository, f"file://localhost{repository}")
        nb["cells"][index]["source"] = local
        (content / name).write_text(json.dumps(nb))
        done = subprocess.run([str(venv / "bin" / "python"), "-c", RUNNER, str(content / name), str(content)],
                              cwd=content, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{name} failed in the simulated Colab session:\n{done.stderr[-6000:]}"
        executed = json.loads((content / name).read_text())
        install_output = json.dumps(executed["cells"][index].get("outputs", []))
        assert "error" not in install_output.lower(), f"the install cell reported an error: {install_output[:2000]}"
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import lessonlib, lessonlib.paths as p; print(lessonlib.__file__); print(p.in_clone())"],
                           cwd=content, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert str(venv) in where[0] and where[1] == "False", f"lessonlib came from {where[0]}, not the installed package"
    fetched = sorted({h.strip("/") for h in hits})
    assert "mnist-cfg.safetensors" in fetched and "mnist-uncond.safetensors" in fetched, fetched
    cached = sorted(p.name for p in (tmp_path / "cache" / "checkpoints").iterdir())
    assert set(fetched) <= set(cached), (fetched, cached)
