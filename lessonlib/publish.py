"""Write every notebook's "Open in Colab" badge and Colab install cell from the course's home:
``python -m lessonlib.publish`` (``--check`` only reports).

The home (repository and ref) is one line of ``pyproject.toml``, read by :mod:`lessonlib.home`. The badge is
the line of the first (title) cell that starts with ``[![Open In Colab]``; the install cell is the first
code cell, tagged ``nbval-skip`` so tests never install anything.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import nbformat

from .home import Home, home

__all__ = ["install_cell_source", "header_problems", "write_headers", "main"]

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
_BADGE = re.compile(r"^\[!\[Open In Colab\]\(.*$", re.M)


def install_cell_source(where: Home) -> str:
    """The Colab-only install cell: pip-installs lessonlib from the home at its pinned ref."""
    return ("# Colab only: install the course package (skipped locally and under nbval).\n"
            "import sys\n\n"
            'if "google.colab" in sys.modules:\n'
            f'    %pip install -q "{where.pip_requirement()}"')


def _notebooks(directory: Path) -> list[Path]:
    return sorted(directory.glob("[0-9][0-9]_*.ipynb"))


def header_problems(where: Home, directory: Path = NOTEBOOK_DIR) -> list[str]:
    """What differs from the home in each notebook's badge and install cell (empty: all agree)."""
    problems = []
    for path in _notebooks(directory):
        cells = nbformat.read(path, as_version=4).cells
        badges = _BADGE.findall(cells[0].source) if cells and cells[0].cell_type == "markdown" else []
        if badges != [where.badge(path.name)]:
            problems.append(f"{path.name}: badge {badges or 'missing'} is not {where.badge(path.name)}")
        install = cells[1] if len(cells) > 1 else None
        if install is None or install.cell_type != "code" or install.source != install_cell_source(where):
            problems.append(f"{path.name}: the second cell is not the Colab install cell for {where.pip_requirement()}")
        elif "nbval-skip" not in install.metadata.get("tags", []):
            problems.append(f"{path.name}: the install cell lacks the nbval-skip tag")
    return problems


def write_headers(where: Home, directory: Path = NOTEBOOK_DIR) -> list[str]:
    """Rewrite the badge and install cell of every notebook whose header differs; returns the notebooks changed."""
    changed = []
    for path in _notebooks(directory):
        nb = nbformat.read(path, as_version=4)
        title, install = nb.cells[0], nb.cells[1]
        if title.cell_type != "markdown" or len(_BADGE.findall(title.source)) != 1 or install.cell_type != "code":
            raise ValueError(f"{path.name} must start with a title cell holding one Colab badge line and a code cell "
                             "for the install; fix it by hand once, then run this again.")
        new_title = _BADGE.sub(where.badge(path.name).replace("\\", "\\\\"), title.source)
        new_install = install_cell_source(where)
        if (new_title, new_install) != (title.source, install.source):
            title.source, install.source = new_title, new_install
            install.metadata["tags"] = sorted(set(install.metadata.get("tags", [])) | {"nbval-skip"})
            nbformat.write(nb, path)
            changed.append(path.name)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lessonlib.publish", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report notebooks that disagree with the home; write nothing")
    parser.add_argument("--dir", type=Path, default=NOTEBOOK_DIR)
    args = parser.parse_args(argv)
    where = home()
    print(f"home: {where.repository} at {where.ref}" + (" (placeholder: not published yet)" if where.is_placeholder else ""))
    if args.check:
        problems = header_problems(where, args.dir)
        print("\n".join(problems) or "every notebook's badge and install cell agree with the home")
        return 1 if problems else 0
    changed = write_headers(where, args.dir)
    print(f"rewrote {len(changed)} notebook header(s): {', '.join(changed) or 'none needed'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
