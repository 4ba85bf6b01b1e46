"""Shared fixtures and the test tiers.

Tiers (markers, registered in pyproject.toml): ``slow`` (trains or samples for seconds), ``notebook``
(every lesson under nbval, marked here), ``browser`` (JupyterLab in Chromium). ``pytest`` runs them all;
``pytest -m "not slow and not notebook and not browser"`` is the fast tier.
"""
import os

import pytest
import torch
from helpers import TINY, randomise

import lessonlib
from lessonlib import zoo
from lessonlib.nets.unet import UNet, UNetConfig

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("LESSONLIB_DEVICE", "cpu")  # tests stay on the CPU; LESSONLIB_DEVICE=cuda pytest runs them on a GPU
# 2 threads, or on pytest-xdist's workers (pyproject's addopts: `-n 2 --dist loadscope`) a share of the cores each;
# the lessons' kernels a worker starts pin the same share (lessonlib.devices.thread_cap)
lessonlib.setup(threads=2, quiet=True)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.notebook)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.fixture
def tiny() -> UNetConfig:
    """A tiny class-conditional U-Net config (the shipped models' shape, 8 base channels)."""
    return TINY


@pytest.fixture
def tiny_zoo(tmp_path, monkeypatch):
    """A checkpoint directory holding a tiny class-conditional 'mnist-cfg' (random weights, linear T = 50)."""
    net = randomise(UNet(TINY))
    zoo.save("mnist-cfg", net, info={"command": "test", "recipe": {"schedule": "linear", "T": 50}}, directory=tmp_path)
    monkeypatch.setenv("LESSONLIB_CHECKPOINTS", str(tmp_path))
    return net
