"""Checkpoints after any install: not in a clone, the zoo fetches each file once from the course's home (here a
local HTTP server standing in for it), verifies its sha256, caches it, and says clearly what to do when it can't."""
import shutil

import pytest
import torch
from helpers import serve_folder
from safetensors.torch import load_file

from lessonlib import zoo

NAME = "mnist-judge"  # the smallest shipped checkpoint (0.57 MB)
CLONE = zoo.REPO_CHECKPOINTS  # this checkout's copy, before a test pretends there is none


@pytest.fixture
def server(tmp_path):
    """Serves a folder on 127.0.0.1 and counts the requests it answers."""
    root = tmp_path / "served"
    root.mkdir()
    with serve_folder(root) as (url, hits):
        yield root, url, hits


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """As after a pip install: no repository copy of the checkpoints, an empty user cache."""
    monkeypatch.setattr(zoo, "REPO_CHECKPOINTS", tmp_path / "no-clone")
    monkeypatch.setenv("LESSONLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LESSONLIB_CHECKPOINTS", raising=False)
    monkeypatch.delenv("LESSONLIB_OFFLINE", raising=False)
    return tmp_path / "cache" / "checkpoints"


def _shipped_file(name: str):
    return CLONE / zoo.manifest()[name]["file"]


def test_a_checkpoint_is_fetched_once_verified_and_cached(server, installed, monkeypatch):
    root, url, hits = server
    reference = load_file(str(_shipped_file(NAME)))
    shutil.copy(_shipped_file(NAME), root)
    monkeypatch.setenv("LESSONLIB_CHECKPOINT_URL", url)
    fetched = zoo.load(NAME).state_dict()
    assert hits == [f"/{zoo.manifest()[NAME]['file']}"] and (installed / zoo.manifest()[NAME]["file"]).exists()
    assert all(torch.equal(reference[k], fetched[k]) for k in reference)
    zoo.load(NAME)
    assert len(hits) == 1  # the second load reads the cache
    assert not list(installed.glob("*.part"))


def test_a_download_with_the_wrong_sha256_is_deleted_and_refused(server, installed, monkeypatch):
    root, url, _ = server
    blob = bytearray(_shipped_file(NAME).read_bytes())
    blob[-1] ^= 0xFF
    (root / zoo.manifest()[NAME]["file"]).write_bytes(bytes(blob))
    monkeypatch.setenv("LESSONLIB_CHECKPOINT_URL", url)
    with pytest.raises(zoo.ZooError, match="deleted and refused"):
        zoo.load(NAME)
    assert not installed.exists() or not any(installed.iterdir())


def test_unreachable_offline_and_unpublished_homes_say_what_to_do(server, installed, monkeypatch):
    _, url, _ = server
    monkeypatch.setenv("LESSONLIB_CHECKPOINT_URL", url)  # serves nothing: 404
    with pytest.raises(zoo.ZooError, match=r"downloading it from http://127\.0\.0\.1.*failed.*LESSONLIB_CHECKPOINT_URL"):
        zoo.load(NAME)
    monkeypatch.setenv("LESSONLIB_OFFLINE", "1")
    with pytest.raises(zoo.ZooError, match="LESSONLIB_OFFLINE is set.*Clone the repository"):
        zoo.load(NAME)
    monkeypatch.delenv("LESSONLIB_OFFLINE")
    monkeypatch.delenv("LESSONLIB_CHECKPOINT_URL")
    with pytest.raises(zoo.ZooError, match="unpublished placeholder"):  # the home is still the placeholder here
        zoo.load(NAME)


def test_the_manifest_travels_inside_the_package():
    assert zoo.SHIPPED_MANIFEST.parent.name == "lessonlib" and NAME in zoo.manifest()
    assert not (CLONE / "manifest.json").exists()  # one manifest, not two


def test_saving_outside_a_clone_goes_to_the_cache(installed, monkeypatch, capsys):
    from lessonlib.nets.classifier import JudgeConfig, JudgeNet

    record = zoo.save("mine", JudgeNet(JudgeConfig(width=8, feature_dim=16)), info={})
    trained = installed.parent / "trained"
    assert (trained / record["file"]).exists() and "mine" in zoo.manifest(trained)
    assert "not a clone" in capsys.readouterr().out
    assert isinstance(zoo.load("mine", directory=trained), JudgeNet)
