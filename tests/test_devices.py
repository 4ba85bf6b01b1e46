"""Devices: the choice, thread pinning on CPU, and networks that follow their inputs across devices.

The suite runs on the CPU (conftest sets LESSONLIB_DEVICE=cpu). The device-parametrised test below also runs on
CUDA when this machine has a GPU and is skipped with the reason otherwise.
"""
import os

import pytest
import torch
from helpers import TINY, randomise
from torch import nn

import lessonlib
from lessonlib import devices, zoo
from lessonlib.guidance import cfg, classifier_grad, conditional, grad_guidance
from lessonlib.nets.classifier import NoisyClassifier, NoisyClassifierConfig
from lessonlib.nets.controlnet import ControlNet
from lessonlib.nets.unet import UNet
from lessonlib.samplers import sample_images
from lessonlib.schedules import make_schedule
from lessonlib.training import diffusion_loss_fn, fit
from lessonlib.types import NULL_CLASS

ACCELERATORS = [pytest.param("cpu", id="cpu"),
                pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(
                    not torch.cuda.is_available(), reason="no CUDA GPU on this machine (the CPU case still runs)"))]


def test_lessonlib_device_is_devices_device():
    assert lessonlib.device is devices.device and lessonlib.setup is devices.setup


def test_the_device_can_be_chosen_and_a_wrong_choice_says_what_to_do(monkeypatch):
    monkeypatch.setenv("LESSONLIB_DEVICE", "cpu")
    assert devices.device() == torch.device("cpu")
    monkeypatch.setenv("LESSONLIB_DEVICE", "gpu-please")
    with pytest.raises(ValueError, match="cpu, cuda, cuda:N or mps"):
        devices.device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("LESSONLIB_DEVICE", "cuda")
        with pytest.raises(ValueError, match="no CUDA GPU"):
            devices.device()


def test_setup_pins_threads_only_on_cpu(monkeypatch, capsys):
    before = torch.get_num_threads()
    monkeypatch.setenv("LESSONLIB_DEVICE", "cpu")
    try:
        assert devices.setup(threads=1) == torch.device("cpu")
        assert torch.get_num_threads() == 1
        assert "cpu, 1 threads" in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        devices.setup(threads=0)


def test_setup_pins_at_most_the_thread_cap_and_a_bad_cap_says_what_to_do(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("LESSONLIB_DEVICE", "cpu")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # CI's machine: 2 cores
    try:
        monkeypatch.setenv("LESSONLIB_THREADS", "1")
        devices.setup(threads=2, quiet=True)
        assert torch.get_num_threads() == 1
        monkeypatch.delenv("LESSONLIB_THREADS")
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "1")
        devices.setup(threads=2, quiet=True)
        assert torch.get_num_threads() == 2
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")  # two lessons side by side share the 2 cores
        devices.setup(threads=2, quiet=True)
        assert torch.get_num_threads() == 1
        for bad in ("0", "two", "-1"):
            monkeypatch.setenv("LESSONLIB_THREADS", bad)
            with pytest.raises(ValueError, match="positive whole number"):
                devices.setup(quiet=True)
    finally:
        torch.set_num_threads(before)


def test_move_and_first_tensor_reach_inside_containers():
    a, b = torch.zeros(2), torch.ones(3, dtype=torch.float64)
    nested = {"x": [1, (a, "s")], "y": b}
    assert devices.first_tensor(("text", nested)) is a
    assert devices.first_tensor(("text", [1, 2])) is None
    moved = devices.move(nested, torch.device("meta"))
    assert moved["x"][0] == 1 and moved["x"][1][1] == "s"
    assert moved["x"][1][0].device.type == "meta" and moved["y"].device.type == "meta"
    assert moved["y"].dtype == torch.float64 and a.device.type == "cpu"  # the original is untouched


class _Recorder(nn.Module):
    """A module living on the meta device that records where its inputs arrive."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1, device="meta"))
        self.seen = []

    @devices.follows_inputs
    def forward(self, x, cond=None):
        self.seen.append((x.device.type, None if cond is None else cond["c"].device.type))
        return torch.ones(2)  # a CPU result: the wrapper returns it to the caller's device (here the CPU)


def test_follows_inputs_moves_inputs_to_the_model():
    rec = _Recorder()
    out = rec(torch.zeros(2), cond={"c": torch.zeros(1), "name": "x"})
    assert rec.seen == [("meta", "meta")] and out.device.type == "cpu"


@pytest.mark.parametrize("accelerator", ACCELERATORS)
def test_the_course_runs_with_its_networks_on_a_device(accelerator, tiny_zoo):
    """CPU tensors in, CPU tensors out, networks on the device: sampling with CFG, classifier guidance,
    a ControlNet built from a loaded base, and a few training steps; values match the CPU run."""
    dev = torch.device(accelerator)
    schedule = make_schedule("linear", 50)
    model = zoo.load("mnist-cfg", device=dev)
    assert next(model.parameters()).device.type == dev.type
    ref = tiny_zoo.eval()  # the same weights on the CPU
    y = torch.arange(4) % 10
    guided = lambda m: cfg(conditional(m, y), conditional(m, NULL_CLASS), 3.0)  # noqa: E731
    noise = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    out = sample_images(guided(model), noise, schedule, steps=5)
    assert out.device.type == "cpu"
    torch.testing.assert_close(out, sample_images(guided(ref), noise, schedule, steps=5), atol=2e-3, rtol=0)

    classifier = randomise(NoisyClassifier(NoisyClassifierConfig(base_channels=8, channel_mults=(1, 2), groups=4)))
    ref_grad = classifier_grad(classifier, y)(noise, torch.full((4,), 10))
    grad = classifier_grad(classifier.to(dev), y)(noise, torch.full((4,), 10))
    assert grad.device.type == "cpu" and grad.abs().sum() > 0
    torch.testing.assert_close(grad, ref_grad, atol=1e-4, rtol=1e-3)
    guided_cls = sample_images(grad_guidance(conditional(model, y), schedule, classifier_grad(classifier, y), 2.0),
                               noise, schedule, steps=3)
    assert guided_cls.device.type == "cpu" and torch.isfinite(guided_cls).all()

    control = ControlNet.from_base(model)
    assert {p.device.type for p in control.parameters()} == {dev.type}
    layout = torch.zeros(4, 1, 28, 28)
    assert control(noise, torch.full((4,), 10), {"class": y, "hint": layout}).device.type == "cpu"

    fresh = UNet(TINY).to(dev)
    images, labels = torch.rand(32, 1, 28, 28) * 2 - 1, torch.arange(32) % 10
    loss_fn = diffusion_loss_fn(images, labels, schedule, batch_size=8, conditional=True, p_uncond=0.2,
                                generator=torch.Generator().manual_seed(0))
    result = fit(fresh, loss_fn, steps=3, lr=1e-3, warmup=1, ema_decay=0.9, progress=False)
    assert len(result.losses) == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    assert next(result.model.parameters()).device.type == dev.type
