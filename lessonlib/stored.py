"""Results computed once and stored with the package: a lesson's heavy sweeps load in a second (lessons 04-12).

A lesson's big measurement (a sweep over guidance scales, a frontier of every method) takes minutes on a laptop
CPU. :func:`get` runs it once, stores what it returned in ``lessonlib/results/NAME.json`` (numbers, intervals,
dicts and lists) beside ``NAME.npz`` (its tensors, compressed, read with ``allow_pickle=False``: never pickle),
and afterwards loads it, printing where it came from: the command that recomputes it, when and on what machine
it was computed, how long that took, the data it used. The record is tied to the computation's ``params`` and to
the sha256 of every checkpoint it used: after a retrain, or a change of the parameters, the stored result is
stale and :func:`get` computes it again (and says so) instead of showing numbers of another model.

The computation stays in the lesson, where the student reads it; it runs

- when the lesson sets ``RECOMPUTE = True`` (the switch beside each stored result), or
- under ``python -m lessonlib.run_all --recompute`` (``LESSONLIB_RECOMPUTE=1``), which executes the lessons and
  writes every stored result anew: the command each loaded cell names.

Students and CI run the same code: both load. The files travel inside the package (package data), so a pip or
Colab install finds them like the checkpoints' manifest.
"""
from __future__ import annotations

import io
import json
import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import __version__
from .manifest import entry, machine_summary
from .metrics import FidInterval, ManifoldScores
from .stats import PairedDifference

__all__ = ["RESULTS_DIR", "StaleResult", "Picture", "get", "load", "save", "encode", "decode", "recompute_requested",
           "check"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_RECOMPUTE_ENV = "LESSONLIB_RECOMPUTE"


class StaleResult(RuntimeError):
    """A stored result is missing, or was computed with other checkpoints or parameters than asked for now."""


def recompute_requested() -> bool:
    """``$LESSONLIB_RECOMPUTE`` is set (``run_all --recompute``): compute and store every result anew."""
    return os.environ.get(_RECOMPUTE_ENV, "") not in ("", "0")


class Picture:
    """Images kept for showing only, stored as 8-bit pixels (an image file's precision): ``Picture(xs)``.

    Measure before storing: a stored result's numbers come from the full-precision samples, and what comes back
    from :func:`get` is a float tensor in [-1, 1] rounded to 256 levels, whether computed or loaded.
    """

    def __init__(self, images: torch.Tensor):
        if not torch.is_tensor(images) or not images.is_floating_point():
            raise TypeError("Picture takes a float image tensor in [-1, 1].")
        self.images = images


# --- encoding: JSON for the structure, one npz for the tensors; no pickle anywhere -----------------------------

def encode(value: Any, tensors: dict[str, np.ndarray]) -> Any:
    """A JSON-able form of ``value``; tensors go into ``tensors`` and are referenced by key.

    Dicts keep keys of any of these types (floats, tuples: a sweep keyed by scale, or by (tower, scale)).
    """
    if isinstance(value, Picture):
        key = f"t{len(tensors)}"
        tensors[key] = ((value.images.detach().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
        return {"__picture__": key}
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu().numpy()
        return {"__tensor__": key}
    if isinstance(value, FidInterval):
        return {"__fid__": [value.fid, value.lo, value.hi, value.n_boot]}
    if isinstance(value, ManifoldScores):
        return {"__manifold__": {k: getattr(value, k) for k in value.__dataclass_fields__}}
    if isinstance(value, PairedDifference):
        return {"__paired__": {k: getattr(value, k) for k in value.__dataclass_fields__}}
    if isinstance(value, dict):
        return {"__items__": [[encode(k, tensors), encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [encode(v, tensors) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"cannot store a {type(value).__name__}: return numbers, strings, tensors, lists, tuples, dicts, "
                    "FidInterval, ManifoldScores, PairedDifference or Picture from the computation (convert other objects first).")


def decode(value: Any, tensors: dict[str, np.ndarray]) -> Any:
    """The inverse of :func:`encode`."""
    if isinstance(value, list):
        return [decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return torch.from_numpy(np.array(tensors[value["__tensor__"]]))
    if "__picture__" in value:
        return torch.from_numpy(np.array(tensors[value["__picture__"]])).float() / 127.5 - 1
    if "__fid__" in value:
        fid, lo, hi, n_boot = value["__fid__"]
        return FidInterval(fid, lo, hi, n_boot)
    if "__manifold__" in value:
        return ManifoldScores(**value["__manifold__"])
    if "__paired__" in value:
        return PairedDifference(**value["__paired__"])
    if "__items__" in value:
        return {_hashable(decode(k, tensors)): decode(v, tensors) for k, v in value["__items__"]}
    if "__tuple__" in value:
        return tuple(decode(v, tensors) for v in value["__tuple__"])
    if "__float__" in value:
        return float(value["__float__"])
    raise ValueError(f"unknown stored value {sorted(value)}")


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key


# --- the record -------------------------------------------------------------------------------------------------

def _checkpoint_hashes(checkpoints: list[str]) -> dict[str, str]:
    return {name: entry(name)["sha256"] for name in checkpoints}


def _paths(name: str, directory: Path | None) -> tuple[Path, Path]:
    if not name or any(c in name for c in "/\\ ") or name.startswith("."):
        raise ValueError(f"a stored result's name is a plain file name such as '04-scale-sweep', got {name!r}.")
    root = Path(directory) if directory is not None else RESULTS_DIR
    return root / f"{name}.json", root / f"{name}.npz"


def _canonical(params: dict) -> Any:
    return json.loads(json.dumps(encode(params, {}), sort_keys=True))


def save(name: str, value: Any, *, params: dict, checkpoints: list[str], seconds: float, command: str,
         data: str = "", directory: Path | None = None) -> Path:
    """Store ``value`` with its provenance; returns the JSON file's path."""
    json_path, npz_path = _paths(name, directory)
    tensors: dict[str, np.ndarray] = {}
    record = {
        "name": name, "command": command, "params": _canonical(params),
        "checkpoints": _checkpoint_hashes(checkpoints), "seconds": round(seconds, 1),
        "computed": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine_summary(),
        "lessonlib": __version__, "data": data, "value": encode(value, tensors),
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(record, indent=1) + "\n")
    if tensors:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **tensors)
        npz_path.write_bytes(buffer.getvalue())
    elif npz_path.exists():
        npz_path.unlink()
    return json_path


def load(name: str, *, params: dict, checkpoints: list[str], directory: Path | None = None) -> tuple[Any, dict]:
    """The stored value and its record; :class:`StaleResult` when missing or made with other checkpoints/params."""
    json_path, npz_path = _paths(name, directory)
    if not json_path.exists():
        raise StaleResult(f"no stored result {name!r} in {json_path.parent}")
    record = json.loads(json_path.read_text())
    changed = [c for c, sha in _checkpoint_hashes(checkpoints).items() if record["checkpoints"].get(c) != sha]
    if changed:
        raise StaleResult(f"stored result {name!r} was computed with other weights of {', '.join(changed)} "
                          "(retrained since)")
    if sorted(record["checkpoints"]) != sorted(checkpoints):
        raise StaleResult(f"stored result {name!r} used checkpoints {sorted(record['checkpoints'])}, "
                          f"not {sorted(checkpoints)}")
    if record["params"] != _canonical(params):
        raise StaleResult(f"stored result {name!r} was computed with other parameters ({record['params']})")
    tensors = {}
    if npz_path.exists():
        with np.load(npz_path, allow_pickle=False) as npz:
            tensors = {k: npz[k] for k in npz.files}
    return decode(record["value"], tensors), record


def check(name: str, *, directory: Path | None = None) -> dict:
    """The record of stored result ``name`` with its checkpoints checked against the manifest (for tests)."""
    json_path, _ = _paths(name, directory)
    record = json.loads(json_path.read_text())
    load(name, params=decode(record["params"], {}), checkpoints=list(record["checkpoints"]), directory=directory)
    return record


def get(name: str, compute: Callable[[], Any], *, params: dict, checkpoints: list[str], lesson: str,
        recompute: bool = False, data: str = "", directory: Path | None = None, quiet: bool = False) -> Any:
    """Load stored result ``name``, or run ``compute()`` and store it (lessons 04-12).

    ``params`` are the computation's visible settings (sample count, scales, steps): change one and the result is
    computed again. ``checkpoints`` are the zoo names it samples or measures with. ``lesson`` is the notebook's
    number ("04"), for the command that recomputes it. ``recompute=True`` (the lesson's ``RECOMPUTE`` switch) or
    ``$LESSONLIB_RECOMPUTE`` computes and stores it anew. Prints one line saying which it did.
    """
    command = f"python -m lessonlib.run_all {lesson} --recompute"
    say = (lambda *_: None) if quiet else print
    why = "asked to recompute" if (recompute or recompute_requested()) else None
    if why is None:
        try:
            value, record = load(name, params=params, checkpoints=checkpoints, directory=directory)
        except StaleResult as exc:
            why = str(exc)
        else:
            say(f"[stored result '{name}' loaded, not computed here: computed {record['computed']} in "
                f"{record['seconds']:.0f} s on {record['machine']}{'; data: ' + record['data'] if record['data'] else ''}."
                f" Recompute it with RECOMPUTE = True in this cell or `{command}`.]")
            return value
    start = time.perf_counter()
    value = compute()
    seconds = time.perf_counter() - start
    tensors: dict[str, np.ndarray] = {}
    value = decode(encode(value, tensors), tensors)  # what a later load gives: pictures rounded, types checked
    try:
        path = save(name, value, params=params, checkpoints=checkpoints, seconds=seconds, command=command,
                    data=data, directory=directory)
        where = f"stored in {path.name}"
    except OSError as exc:  # a read-only install: the result is still used, just not kept
        where = f"not stored ({exc.strerror})"
    say(f"[stored result '{name}' computed here in {seconds:.0f} s ({why}); {where}.]")
    return value
