"""Where the course keeps things on disk, and whether it may use the network (lessons 02-10).

- a clone of the repository: ``data/`` beside the package holds the shipped checkpoints (and, if you like,
  the datasets); after a pip install there is no such folder;
- the user cache: ``$LESSONLIB_CACHE``, else ``$XDG_CACHE_HOME/lessonlib``, else ``~/.cache/lessonlib``, for
  downloaded datasets and checkpoints;
- ``LESSONLIB_OFFLINE=1``: never touch the network (datasets fall back to what dependencies ship).
"""
from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

__all__ = ["REPO_ROOT", "in_clone", "cache_dir", "offline", "reachable"]

REPO_ROOT = Path(__file__).resolve().parent.parent
_reachable: dict[str, bool] = {}


def in_clone() -> bool:
    """True in a clone of the course repository (its ``data/checkpoints`` sits beside the package)."""
    return (REPO_ROOT / "data" / "checkpoints").is_dir()


def cache_dir() -> Path:
    """The user cache: ``$LESSONLIB_CACHE``, else ``$XDG_CACHE_HOME/lessonlib``, else ``~/.cache/lessonlib``."""
    env = os.environ.get("LESSONLIB_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "lessonlib"


def offline() -> bool:
    """``LESSONLIB_OFFLINE`` is set (to anything but empty or 0): the network is never used."""
    return os.environ.get("LESSONLIB_OFFLINE", "") not in ("", "0")


def reachable(host: str, *, timeout: float = 3.0) -> bool:
    """Can a TCP connection to ``host``:443 be opened within ``timeout`` seconds? Asked once per host and process.

    The probe runs in a daemon thread joined with the timeout, so a slow name lookup cannot hang a lesson either.
    """
    if offline():
        return False
    if host not in _reachable:
        result = []

        def probe():
            try:
                socket.create_connection((host, 443), timeout=timeout).close()
                result.append(True)
            except OSError:
                result.append(False)

        thread = threading.Thread(target=probe, daemon=True)
        thread.start()
        thread.join(timeout + 0.5)
        _reachable[host] = bool(result and result[0])
    return _reachable[host]
