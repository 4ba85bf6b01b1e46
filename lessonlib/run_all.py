"""Execute the course in order, each notebook in a fresh kernel: ``python -m lessonlib.run_all``.

Writes the executed notebooks back (so students see results on GitHub before running anything)
and prints a table of per-notebook wall time. ``MPLBACKEND`` is removed for the kernels, so figures
are always drawn inline, whatever the calling shell set. Progress bars are silenced (``TQDM_DISABLE=1``) so the
committed outputs hold results, not bars. Exits non-zero if any notebook fails.

Heavy sweeps are stored results (:mod:`lessonlib.stored`): the lessons load them and say so.
``--recompute`` runs those computations in the lessons again and stores what they return, the command every
loaded cell names; it takes several times longer.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

LESSON_BUDGET_S = 90  # each lesson's time on 2 CPU cores (the CI budget issue); a warning, not a failure
NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


def run_notebook(path: Path, *, timeout: int = 900, write: bool = True) -> tuple[float, str | None]:
    """Execute one notebook in a fresh kernel; returns (seconds, error message or None)."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start, error = time.perf_counter(), None
    try:
        client.execute()
    except CellExecutionError as exc:
        error = str(exc).strip().splitlines()[-1]
    seconds = time.perf_counter() - start
    if write:
        nbformat.write(nb, path)
    return seconds, error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lessonlib.run_all", description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="run only notebooks whose name contains one of these strings")
    parser.add_argument("--dir", type=Path, default=NOTEBOOK_DIR)
    parser.add_argument("--no-write", action="store_true", help="execute without writing outputs back")
    parser.add_argument("--timeout", type=int, default=900, help="seconds allowed per cell")
    parser.add_argument("--recompute", action="store_true",
                        help="compute every stored result in these lessons anew and store it (lessonlib.stored)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.recompute:
        os.environ["LESSONLIB_RECOMPUTE"] = "1"  # read by lessonlib.stored.get in each lesson's kernel
    if os.environ.pop("MPLBACKEND", None):  # e.g. Agg from CI: the kernels would draw no figure into the outputs
        print("MPLBACKEND is ignored here: the notebooks' figures are drawn with the inline backend.")
    paths = sorted(p for p in args.dir.glob("[0-9][0-9]_*.ipynb") if not args.only or any(s in p.name for s in args.only))
    if not paths:
        parser.error(f"no notebooks matched in {args.dir}")
    rows = []
    for path in paths:
        seconds, error = run_notebook(path, timeout=args.timeout, write=not args.no_write)
        size = path.stat().st_size / 1e6
        rows.append((path.name, seconds, size, error))
        print(f"{path.name:<40} {seconds:7.1f} s  {size:5.2f} MB  {'FAILED: ' + error if error else 'ok'}", flush=True)
    slowest = max(rows, key=lambda r: r[1])
    print(f"{'total':<40} {sum(r[1] for r in rows):7.1f} s  ({len(rows)} notebooks, "
          f"{sum(1 for r in rows if r[3])} failed; slowest {slowest[0][:2]}, {slowest[1]:.0f} s)")
    over = [r for r in rows if r[1] > LESSON_BUDGET_S]
    if over and not args.recompute:
        print(f"warning: over the {LESSON_BUDGET_S} s lesson budget: "
              + ", ".join(f"{r[0][:2]} ({r[1]:.0f} s)" for r in over))
    return 1 if any(r[3] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
