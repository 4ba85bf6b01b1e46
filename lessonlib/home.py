"""The course's public home: one line in ``pyproject.toml`` names the repository and the ref to pin.

``[project.urls] Source = "https://github.com/OWNER/REPO/tree/REF"`` is the only place. Everything that
points at the home reads it from here: the "Open in Colab" badge and the Colab install cell of every
notebook (written by ``python -m lessonlib.publish``, checked by a test). Inside a checkout the line is read
from ``pyproject.toml``; after a pip install, from the installed package's metadata, which carries the same
URL. Publishing is a one-line change: replace the placeholder owner/repository (and ``main`` by a release tag
such as ``v0.2.0`` once one exists), then run ``python -m lessonlib.publish``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

__all__ = ["Home", "home", "PLACEHOLDER_OWNER"]

PLACEHOLDER_OWNER = "lessonlib-course"  # not a real GitHub account yet: the course is unpublished
_PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
_SOURCE = re.compile(r"^https://github\.com/(?P<owner>[\w.-]+)/(?P<repo>[\w.-]+)/tree/(?P<ref>[\w./-]+)$")


@dataclass(frozen=True)
class Home:
    """Where the course lives: a GitHub repository and the ref (branch or tag) that installs and badges pin."""

    owner: str
    repo: str
    ref: str

    @property
    def repository(self) -> str:
        return f"https://github.com/{self.owner}/{self.repo}"

    @property
    def is_placeholder(self) -> bool:
        return self.owner == PLACEHOLDER_OWNER

    def colab_url(self, notebook: str) -> str:
        """The Colab link that opens ``notebooks/<notebook>`` at the pinned ref."""
        return f"https://colab.research.google.com/github/{self.owner}/{self.repo}/blob/{self.ref}/notebooks/{notebook}"

    def badge(self, notebook: str) -> str:
        return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({self.colab_url(notebook)})"

    def pip_requirement(self) -> str:
        """What the Colab install cell gives pip: lessonlib from the repository at the pinned ref."""
        return f"lessonlib @ git+{self.repository}@{self.ref}"

    def raw_url(self, path: str) -> str:
        """A file of the repository at the pinned ref, as raw bytes (how checkpoints can be fetched)."""
        return f"https://raw.githubusercontent.com/{self.owner}/{self.repo}/{self.ref}/{path}"


def parse_source(url: str) -> Home:
    """A Home from ``https://github.com/OWNER/REPO/tree/REF``; anything else raises, saying what is expected."""
    m = _SOURCE.match(url.strip())
    if not m:
        raise ValueError(f"the course's Source URL must look like https://github.com/OWNER/REPO/tree/REF, got {url!r}.")
    return Home(m["owner"], m["repo"], m["ref"])


def _source_from_pyproject(path: Path) -> str | None:
    text = path.read_text()
    urls = re.search(r"^\[project\.urls\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    source = urls and re.search(r'^Source\s*=\s*"([^"]+)"', urls.group(1), re.M)
    return source.group(1) if source else None


def home(pyproject: Path | None = None) -> Home:
    """The course's home: from ``pyproject.toml`` in a checkout, else from the installed package's metadata."""
    path = pyproject or _PYPROJECT
    source = _source_from_pyproject(path) if path.is_file() else None
    if source is None:
        try:
            urls = metadata.metadata("lessonlib").get_all("Project-URL") or []
        except metadata.PackageNotFoundError:
            urls = []
        source = next((u.split(",", 1)[1].strip() for u in urls if u.lower().startswith("source,")), None)
    if source is None:
        raise RuntimeError("cannot find the course's Source URL: neither pyproject.toml nor the installed lessonlib's "
                           "metadata has [project.urls] Source. Reinstall with `pip install -e \".[dev]\"`.")
    return parse_source(source)
