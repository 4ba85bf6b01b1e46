"""Shipped checkpoints: safetensors files plus a manifest of how each was made (lessons 02-10).

The manifest, ``lessonlib/checkpoints.json``, travels inside the package; it maps a name to its file, sha256,
architecture and config, and to the recipe, command, data (with image count), wall time, machine and metrics
that produced it. The files are found after any install:

1. in a clone of the repository, in ``data/checkpoints/``;
2. else in the user cache (``$LESSONLIB_CACHE``, default ``~/.cache/lessonlib``), under ``checkpoints/``;
3. else fetched once into that cache from the course's public home (:mod:`lessonlib.home`; raw files at the
   pinned ref, or ``$LESSONLIB_CHECKPOINT_URL``), with a progress bar and a timeout; never with
   ``LESSONLIB_OFFLINE=1``.

:func:`load` verifies the sha256 before reading, and only ever reads safetensors (never pickle); a download
whose sha256 differs is deleted and refused. ``$LESSONLIB_CHECKPOINTS`` (or ``directory=``) names a zoo of
your own instead: a folder with its ``manifest.json`` and files, never fetched.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

try:
    import fcntl  # POSIX: the manifest lock of zoo.save
except ImportError:  # Windows: no lock, one training at a time
    fcntl = None

from safetensors.torch import load_file, save_file
from torch import nn

from .devices import device as default_device
from .flow import LinearPath, make_path
from .home import home
from .manifest import SHIPPED_MANIFEST, ZooError, _manifest_path, _retrain_hint, checkpoint_dir, entry, machine_summary, manifest
from .nets.classifier import JudgeConfig, JudgeNet, NoisyClassifier, NoisyClassifierConfig
from .nets.clip import SmallCLIP, SmallCLIPConfig
from .nets.config import config_from_dict
from .nets.controlnet import ControlNet, ControlNetConfig
from .nets.unet import UNet, UNetConfig
from .paths import REPO_ROOT, cache_dir, offline
from .progress import progress_bar
from .schedules import NoiseSchedule

__all__ = ["ARCHITECTURES", "ZooError", "checkpoint_dir", "checkpoint_file", "manifest", "entry",
           "schedule_for", "load", "save", "save_dir", "sha256_of", "machine_summary"]

ARCHITECTURES: dict[str, tuple[type[nn.Module], type]] = {
    "UNet": (UNet, UNetConfig),
    "JudgeNet": (JudgeNet, JudgeConfig),
    "NoisyClassifier": (NoisyClassifier, NoisyClassifierConfig),
    "SmallCLIP": (SmallCLIP, SmallCLIPConfig),
    "ControlNet": (ControlNet, ControlNetConfig),
}
MAX_BYTES = 10 * 1024 * 1024
REPO_CHECKPOINTS = REPO_ROOT / "data" / "checkpoints"  # present in a clone
FETCH_TIMEOUT_S = 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _source_url(file: str) -> str | None:
    """Where a shipped checkpoint file can be downloaded from, or None when nowhere is known."""
    base = os.environ.get("LESSONLIB_CHECKPOINT_URL")
    if base:
        return base.rstrip("/") + "/" + file
    where = home()
    return None if where.is_placeholder else where.raw_url(f"data/checkpoints/{file}")


def _fetch(url: str, target: Path, expected: dict) -> None:
    """Download url to target through a temporary file; a sha256 that differs from the manifest's is refused."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
            chunks = iter(lambda: response.read(1 << 16), b"")
            bar = progress_bar(None, desc=f"download {target.name}", total=expected.get("bytes"), unit="B",
                               unit_scale=True)
            for chunk in chunks:
                out.write(chunk)
                bar.update(len(chunk))
            bar.close()
        digest = sha256_of(Path(tmp))
        if digest != expected["sha256"]:
            raise ZooError(f"the download of {target.name} from {url} has sha256 {digest[:12]}..., not the manifest's "
                           f"{expected['sha256'][:12]}...: deleted and refused. The source may hold another version; "
                           "check the course's home and ref (pyproject.toml, [project.urls] Source).")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def checkpoint_file(name: str, *, directory: str | Path | None = None) -> Path:
    """The verified local file of checkpoint ``name``: from the repository, the cache, or downloaded once (lesson 02)."""
    directory = Path(directory) if directory is not None else checkpoint_dir()
    record = entry(name, directory=directory)
    if directory is not None:  # a zoo of your own: its files live beside its manifest, never fetched
        path = directory / record["file"]
        if not path.exists():
            raise ZooError(f"checkpoint file {path} is missing. " + _retrain_hint(name, record))
        return _verified(path, name, record)
    repo, cached = REPO_CHECKPOINTS / record["file"], cache_dir() / "checkpoints" / record["file"]
    if repo.exists():
        return _verified(repo, name, record)
    if cached.exists() and sha256_of(cached) == record["sha256"]:
        return cached
    url = None if offline() else _source_url(record["file"])
    if url is None:
        why = ("LESSONLIB_OFFLINE is set" if offline()
               else "the course's home in pyproject.toml is still the unpublished placeholder")
        raise ZooError(f"checkpoint {record['file']} is neither in {REPO_CHECKPOINTS} (a clone of the repository) nor in "
                       f"the cache {cached.parent}, and it cannot be downloaded: {why}. Clone the repository, copy the "
                       "file into the cache, or set LESSONLIB_CHECKPOINT_URL to a folder that serves it. "
                       + _retrain_hint(name, record))
    try:
        _fetch(url, cached, record)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise ZooError(f"checkpoint {record['file']} is neither in {REPO_CHECKPOINTS} nor in the cache {cached.parent}, "
                       f"and downloading it from {url} failed ({exc}). Connect to the internet and run again, set "
                       "LESSONLIB_CHECKPOINT_URL to a reachable copy, or clone the repository.") from exc
    return cached


def _verified(path: Path, name: str, record: dict) -> Path:
    digest = sha256_of(path)
    if digest != record["sha256"]:
        raise ZooError(f"checkpoint {path} is corrupt or was replaced: sha256 {digest[:12]}... does not match the "
                       f"manifest's {record['sha256'][:12]}... " + _retrain_hint(name, record))
    return path


def schedule_for(name: str, *, directory: Path | None = None) -> NoiseSchedule | LinearPath:
    """The noise schedule checkpoint ``name`` was trained with, from its manifest entry: sample with it (lessons 02-12).

    Flow-matching checkpoints get :data:`lessonlib.flow.LINEAR` (sample them with method="euler" or "heun").
    """
    recipe = entry(name, directory=directory)["recipe"]
    return make_path(recipe["schedule"], recipe["T"])


def load(name: str, *, directory: Path | None = None, device=None) -> nn.Module:
    """Build the model named ``name`` and load its verified weights onto ``device`` (default
    :func:`lessonlib.device`: a GPU when there is one); eval mode. The networks follow their inputs
    (:mod:`lessonlib.devices`), so CPU tensors may be given to a model on a GPU (lesson 02)."""
    directory = directory or checkpoint_dir()
    record = entry(name, directory=directory)
    path = checkpoint_file(name, directory=directory)
    model_cls, config_cls = ARCHITECTURES[record["arch"]]
    model = model_cls(config_from_dict(config_cls, record["config"]))
    model.load_state_dict(load_file(str(path)))
    return model.to(device or default_device()).eval()


def save_dir(directory: Path | None = None) -> Path:
    """The folder :func:`save` writes to: ``directory``, else ``$LESSONLIB_CHECKPOINTS``, else the shipped zoo in a
    clone of the repository, else ``<cache>/trained``."""
    directory = directory or checkpoint_dir()
    if directory is not None:
        return Path(directory)
    return REPO_CHECKPOINTS if REPO_CHECKPOINTS.is_dir() else cache_dir() / "trained"


def save(name: str, model: nn.Module, *, info: dict, directory: Path | None = None) -> dict:
    """Write ``<name>.safetensors`` and its manifest entry (arch, config, sha256 and ``info``).

    Without ``directory`` (and ``$LESSONLIB_CHECKPOINTS``) this rewrites the shipped zoo, which only a clone of the
    repository can do; after a pip install the checkpoint goes to ``<cache>/trained`` with a manifest of its own.
    """
    arch = type(model).__name__
    if arch not in ARCHITECTURES:
        raise ZooError(f"cannot save a {arch}: known architectures are {sorted(ARCHITECTURES)}.")
    directory = directory or checkpoint_dir()
    if directory is None and not REPO_CHECKPOINTS.is_dir():
        directory = save_dir(None)
        print(f"not a clone of the course repository: {name} is saved to {directory} "
              f"(load it with zoo.load({name!r}, directory=...))")
    files = save_dir(directory)
    files.mkdir(parents=True, exist_ok=True)
    path = files / f"{name}.safetensors"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))
    if path.stat().st_size > MAX_BYTES:
        raise ZooError(f"{path} is {path.stat().st_size / 1e6:.1f} MB; shipped checkpoints must stay under 10 MB.")
    record = {"file": path.name, "sha256": sha256_of(path), "bytes": path.stat().st_size, "arch": arch,
             "config": model.config.to_dict(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "machine": machine_summary(), **info}
    target = _manifest_path(directory)
    with _locked(target):  # trainings side by side (one GPU, several recipes) each add their entry
        entries = manifest(directory) if directory is not None else json.loads(SHIPPED_MANIFEST.read_text())
        entries[name] = record
        partial = target.with_name(f".{target.name}.{os.getpid()}")
        partial.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
        os.replace(partial, target)  # readers see the old manifest or the new one, never half of one
    return record


@contextmanager
def _locked(path: Path):
    """Hold an exclusive lock on ``path``'s lock file (POSIX; elsewhere no lock: one training at a time)."""
    if fcntl is None:  # Windows
        yield
        return
    with open(path.with_name(f".{path.name}.lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
