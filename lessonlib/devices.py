"""Where the course computes: the best device, thread pinning on CPU, and models that follow their inputs.

The course's tensors live on the CPU: datasets, noise drawn from seeded CPU generators, samples, metrics, plots.
A model may live elsewhere (a GPU): every public method of the course's networks is wrapped by
:func:`follows_inputs`, which moves the tensors it is given to the model's device and moves what it returns back
to the device of the first tensor it was given (the CPU when it was given none, e.g. prompts). Samplers, guidance,
metrics and training therefore keep their tensors on the input's device, and a lesson runs unchanged on a GPU,
with only the networks' arithmetic moved there. (Accelerate's ``AlignDevicesHook(io_same_device=True)`` makes the
same choice.) Gradients flow through the moves, so classifier and CLIP guidance work across devices too.

``LESSONLIB_DEVICE`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``) overrides the choice; the test suite sets it to
``cpu`` so that its numbers do not depend on the machine. ``LESSONLIB_THREADS`` caps the CPU threads :func:`setup`
pins; under pytest-xdist the workers share the cores (:func:`thread_cap`).
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Callable, Iterator, TypeVar

import torch
from torch import Tensor, nn

__all__ = ["device", "setup", "thread_cap", "follows_inputs", "move", "first_tensor", "PRECISIONS", "bf16_support",
           "training_precision", "autocast"]

PRECISIONS = ("fp32", "bf16")  # a recipe's training precision (lessonlib.recipes.Recipe.precision)

F = TypeVar("F", bound=Callable[..., Any])


def device() -> torch.device:
    """``$LESSONLIB_DEVICE`` if set, else the best available device: CUDA, then Apple MPS, then CPU."""
    chosen = os.environ.get("LESSONLIB_DEVICE", "").strip()
    if chosen:
        try:
            dev = torch.device(chosen)
        except RuntimeError as exc:
            raise ValueError(f"LESSONLIB_DEVICE={chosen!r} is not a device; use cpu, cuda, cuda:N or mps.") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"LESSONLIB_DEVICE={chosen!r} but this torch sees no CUDA GPU; unset it or use cpu.")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def thread_cap() -> int | None:
    """The most CPU threads :func:`setup` pins: ``$LESSONLIB_THREADS`` when set; under pytest-xdist (the test suite
    runs two lessons side by side, each in a kernel its worker starts) the cores shared among the workers; else None."""
    value = os.environ.get("LESSONLIB_THREADS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"LESSONLIB_THREADS={value!r} must be a positive whole number of threads; unset it for 2.")
        return int(value)
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "").strip()
    if workers.isdigit() and int(workers) > 1:
        return max(1, (os.cpu_count() or 1) // int(workers))
    return None


def setup(threads: int = 2, *, quiet: bool = False) -> torch.device:
    """A lesson's first call: pick :func:`device`; on CPU pin torch to ``threads`` threads (at most the cores, and at
    most :func:`thread_cap`).

    Returns the device; the shipped checkpoints load onto it (``zoo.load``) and the recipes train on it.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}.")
    dev = device()
    if dev.type == "cpu":
        torch.set_num_threads(max(1, min(threads, os.cpu_count() or 1, thread_cap() or threads)))
        where = f"cpu, {torch.get_num_threads()} threads"
    elif dev.type == "cuda":
        where = f"{dev} ({torch.cuda.get_device_name(dev)})"
    else:
        where = str(dev)
    if not quiet:
        print(f"lessonlib runs on {where}")
    return dev


def _tensors(obj: Any) -> Iterator[Tensor]:
    """Every tensor in obj, searching tuples, lists and dict values in order."""
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (tuple, list, dict)):
        for item in obj.values() if isinstance(obj, dict) else obj:
            yield from _tensors(item)


def first_tensor(obj: Any) -> Tensor | None:
    """The first tensor in obj, searching tuples, lists and dict values in order; None if there is none."""
    return next(_tensors(obj), None)


def move(obj: Any, dev: torch.device) -> Any:
    """obj with every tensor (also inside tuples, lists and dicts) on ``dev``; other values unchanged."""
    if isinstance(obj, Tensor):
        return obj if obj.device == dev else obj.to(dev)
    if isinstance(obj, dict):
        return {k: move(v, dev) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        moved = [move(v, dev) for v in obj]
        return type(obj)(moved) if isinstance(obj, list) or type(obj) is tuple else type(obj)(*moved)
    return obj


def _model_device(module: nn.Module) -> torch.device | None:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return None


def follows_inputs(method: F) -> F:
    """Wrap a network's method: tensors in go to the network's device, tensors out come back to the first input
    tensor's device (the CPU if none was given). A no-op when everything already shares one device."""

    @functools.wraps(method)
    def wrapper(self: nn.Module, *args, **kwargs):
        home = _model_device(self)
        given = first_tensor((args, kwargs))
        back = given.device if given is not None else torch.device("cpu")
        if home is None or (home == back and all(t.device == home for t in _tensors((args, kwargs)))):
            return method(self, *args, **kwargs)
        out = method(self, *move(args, home), **move(kwargs, home))
        return move(out, back)

    return wrapper  # type: ignore[return-value]



def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_support(dev: torch.device) -> tuple[bool, str]:
    """Whether ``dev`` computes bfloat16 natively (so autocast to bf16 is faster, not an emulation), and why.

    CPU: the AVX-512 BF16 or AMX-BF16 instructions (oneDNN uses them; without them bf16 is converted in software
    and slower than float32). CUDA: ``torch.cuda.is_bf16_supported()`` (Ampere and later). Apple MPS: the course
    trains in float32 there.
    """
    if dev.type == "cpu":
        native = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        if native is not None and native():
            return True, "this CPU has AVX-512 BF16"
        flags = _cpu_flags()
        if {"avx512_bf16", "amx_bf16"} & flags:
            return True, "this CPU has " + " and ".join(sorted({"avx512_bf16", "amx_bf16"} & flags))
        return False, "this CPU has no AVX-512 BF16 or AMX instructions (bf16 would be emulated, slower than fp32)"
    if dev.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return True, f"{torch.cuda.get_device_name(dev)} computes bf16"
        return False, f"{torch.cuda.get_device_name(dev)} has no bf16 arithmetic"
    return False, f"the course trains in fp32 on {dev.type}"


_SAID: set[tuple[str, str]] = set()


def training_precision(requested: str, dev: torch.device, *, quiet: bool = False) -> str:
    """The precision a recipe that asks for ``requested`` trains in on ``dev``: ``"bf16"`` only where the device
    computes it natively (:func:`bf16_support`), else ``"fp32"``, saying so once per device.

    bf16 means mixed precision: autocast on the forward pass and the loss, float32 master weights, optimizer state
    and EMA. A recipe that asks for fp32 always gets fp32.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}.")
    if requested == "fp32":
        return "fp32"
    ok, why = bf16_support(dev)
    if not ok and not quiet and (requested, dev.type) not in _SAID:
        _SAID.add((requested, dev.type))
        print(f"training in fp32, not bf16: {why}")
    return "bf16" if ok else "fp32"


def autocast(precision: str, dev: torch.device):
    """The context a training step runs its forward pass and loss in: bf16 autocast on ``dev``, or nothing for fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=torch.bfloat16)
