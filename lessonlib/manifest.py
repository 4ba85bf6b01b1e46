"""The checkpoints' manifest, read without loading any network: names, files, sha256, recipes and metrics.

:mod:`lessonlib.zoo` loads and saves checkpoints and re-exports everything here; modules that only need to know
which weights a result was made with (:mod:`lessonlib.stored`) read the manifest from this low floor.
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

__all__ = ["SHIPPED_MANIFEST", "ZooError", "checkpoint_dir", "manifest", "entry", "machine_summary"]

SHIPPED_MANIFEST = Path(__file__).resolve().parent / "checkpoints.json"


class ZooError(RuntimeError):
    """A checkpoint is missing, unknown or does not match its manifest."""


def checkpoint_dir() -> Path | None:
    """``$LESSONLIB_CHECKPOINTS`` (a zoo of your own) if set, else None: the shipped zoo."""
    env = os.environ.get("LESSONLIB_CHECKPOINTS")
    return Path(env).expanduser() if env else None


def _manifest_path(directory: str | Path | None) -> Path:
    return Path(directory) / "manifest.json" if directory is not None else SHIPPED_MANIFEST


def manifest(directory: Path | None = None) -> dict:
    """The manifest as a dict: the shipped one, or that of ``directory`` / ``$LESSONLIB_CHECKPOINTS`` (empty if none)."""
    path = _manifest_path(directory or checkpoint_dir())
    return json.loads(path.read_text()) if path.exists() else {}


def machine_summary() -> str:
    """A one-line description of this machine: CPU or GPU, core count, torch version."""
    if torch.cuda.is_available():
        where = torch.cuda.get_device_name(0)
    else:
        where = f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return f"{where}; {platform.system()}; torch {torch.__version__}"


def _retrain_hint(name: str, entry: dict | None) -> str:
    command = (entry or {}).get("command", f"python -m lessonlib.train {name}")
    return f"Retrain it with `{command}`, or restore data/checkpoints/ from the repository (git checkout)."


def entry(name: str, *, directory: Path | None = None) -> dict:
    """The manifest entry of checkpoint ``name``; an unknown name raises a ZooError listing the known ones."""
    directory = directory or checkpoint_dir()
    entries = manifest(directory)
    if name not in entries:
        known = ", ".join(sorted(entries)) or "none yet"
        raise ZooError(f"no checkpoint named {name!r} in {_manifest_path(directory)} (known: {known}). "
                       + _retrain_hint(name, None))
    return entries[name]
