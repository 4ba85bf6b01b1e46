"""Shared fixtures and the test tiers.

Tiers (markers, registered in pyproject.toml): ``slow`` (trains or samples for seconds), ``notebook``
(every lesson under nbval, marked here), ``browser`` (JupyterLab in Chromium). ``pytest`` runs them all;
``pytest -m "not slow and not notebook and not browser"`` is the fast tier. ``fallback`` marks what changes
without a data folder (the data loaders, the lessons' data-loading calls, lesson 03 end to end): CI runs
``pytest -m fallback`` a second time with no ``LESSONLIB_DATA``.

At the end, pytest prints each lesson's seconds under nbval (the sum of its cells) and warns about any over
:data:`LESSON_BUDGET_S`; with ``$LESSONLIB_TIMINGS`` set, it also writes them there as JSON (``.ci/run``'s budget).
"""
import json
import os
from collections import defaultdict
from pathlib import Path

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


FALLBACK_LESSONS = {"03_noise_aware_classifier.ipynb"}  # run end to end in the data-less pass (with test_colab's 02, 07)
LESSON_BUDGET_S = 90
_lesson_seconds: dict[str, float] = defaultdict(float)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.notebook)
            if item.path.name in FALLBACK_LESSONS:
                item.add_marker(pytest.mark.fallback)


def pytest_runtest_logreport(report):
    """Sum each lesson's cell times (setup, call, teardown), on the controller as on a single process."""
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _lesson_seconds[Path(path).name] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not _lesson_seconds:
        return
    write = terminalreporter.write_line
    terminalreporter.section("lesson seconds under nbval (sum of cells)")
    for name, seconds in sorted(_lesson_seconds.items()):
        flag = f"  WARNING: over the {LESSON_BUDGET_S} s lesson budget" if seconds > LESSON_BUDGET_S else ""
        write(f"{name:<44} {seconds:7.1f} s{flag}")
    write(f"{'total':<44} {sum(_lesson_seconds.values()):7.1f} s ({len(_lesson_seconds)} lessons)")
    target = os.environ.get("LESSONLIB_TIMINGS")
    if target:
        Path(target).write_text(json.dumps(dict(sorted(_lesson_seconds.items())), indent=1))


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
