"""Shipped checkpoints: safetensors files plus a manifest of how each was made (lessons 02-10).

``data/checkpoints/manifest.json`` maps a name to its file, sha256, architecture and config, and to
the recipe, command, data (with image count), wall time, machine and metrics that produced it.
:func:`load` verifies the sha256 before reading, and only ever reads safetensors (never pickle).
``$LESSONLIB_CHECKPOINTS`` points elsewhere (for example at checkpoints you retrained).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .nets.classifier import JudgeConfig, JudgeNet, NoisyClassifier, NoisyClassifierConfig
from .nets.clip import SmallCLIP, SmallCLIPConfig
from .nets.config import config_from_dict
from .nets.controlnet import ControlNet, ControlNetConfig
from .nets.unet import UNet, UNetConfig
from .schedules import NoiseSchedule, make_schedule

__all__ = ["ARCHITECTURES", "ZooError", "checkpoint_dir", "manifest", "entry", "schedule_for", "load",
           "save", "sha256_of", "machine_summary"]

ARCHITECTURES: dict[str, tuple[type[nn.Module], type]] = {
    "UNet": (UNet, UNetConfig),
    "JudgeNet": (JudgeNet, JudgeConfig),
    "NoisyClassifier": (NoisyClassifier, NoisyClassifierConfig),
    "SmallCLIP": (SmallCLIP, SmallCLIPConfig),
    "ControlNet": (ControlNet, ControlNetConfig),
}
MAX_BYTES = 10 * 1024 * 1024


class ZooError(RuntimeError):
    """A checkpoint is missing, unknown or does not match its manifest."""


def checkpoint_dir() -> Path:
    """``$LESSONLIB_CHECKPOINTS`` if set, else ``data/checkpoints`` in the repository."""
    env = os.environ.get("LESSONLIB_CHECKPOINTS")
    return Path(env).expanduser() if env else Path(__file__).resolve().parent.parent / "data" / "checkpoints"


def manifest(directory: Path | None = None) -> dict:
    """The manifest as a dict (empty if there is none yet)."""
    path = (directory or checkpoint_dir()) / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
        raise ZooError(f"no checkpoint named {name!r} in {directory / 'manifest.json'} (known: {known}). "
                       + _retrain_hint(name, None))
    return entries[name]


def schedule_for(name: str, *, directory: Path | None = None) -> NoiseSchedule:
    """The noise schedule checkpoint ``name`` was trained with, from its manifest entry: sample with it (lessons 02-10)."""
    recipe = entry(name, directory=directory)["recipe"]
    return make_schedule(recipe["schedule"], recipe["T"])


def load(name: str, *, directory: Path | None = None, device=None) -> nn.Module:
    """Build the model named ``name`` and load its verified weights onto ``device`` (default CPU); eval mode (lesson 02)."""
    directory = directory or checkpoint_dir()
    entry_ = entry(name, directory=directory)
    path = directory / entry_["file"]
    if not path.exists():
        raise ZooError(f"checkpoint file {path} is missing. " + _retrain_hint(name, entry_))
    digest = sha256_of(path)
    if digest != entry_["sha256"]:
        raise ZooError(f"checkpoint {path} is corrupt or was replaced: sha256 {digest[:12]}... does not match the "
                       f"manifest's {entry_['sha256'][:12]}... " + _retrain_hint(name, entry_))
    model_cls, config_cls = ARCHITECTURES[entry_["arch"]]
    model = model_cls(config_from_dict(config_cls, entry_["config"]))
    model.load_state_dict(load_file(str(path)))
    return model.to(device or "cpu").eval()


def save(name: str, model: nn.Module, *, info: dict, directory: Path | None = None) -> dict:
    """Write ``<name>.safetensors`` and its manifest entry (arch, config, sha256 and ``info``)."""
    arch = type(model).__name__
    if arch not in ARCHITECTURES:
        raise ZooError(f"cannot save a {arch}: known architectures are {sorted(ARCHITECTURES)}.")
    directory = directory or checkpoint_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.safetensors"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))
    if path.stat().st_size > MAX_BYTES:
        raise ZooError(f"{path} is {path.stat().st_size / 1e6:.1f} MB; shipped checkpoints must stay under 10 MB.")
    record = {"file": path.name, "sha256": sha256_of(path), "bytes": path.stat().st_size, "arch": arch,
             "config": model.config.to_dict(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "machine": machine_summary(), **info}
    entries = manifest(directory)
    entries[name] = record
    (directory / "manifest.json").write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
    return record
