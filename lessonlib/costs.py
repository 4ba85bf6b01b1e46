"""What guidance and attention cost: network passes and FLOPs counted, the lecture's formulas, and the same
numbers measured (lessons 04, 06, 07, 08, 09, 10).

**Guidance** (lessons 04, 06, 07, 09): :func:`step_cost` runs one eps-function call and counts, per sample, the
forward and backward passes through each named network (forward hooks; a backward pass is a gradient reaching
the network's output) and the matmul and convolution FLOPs of the whole call, backward included;
:func:`guidance_costs` does it for the course's guidance methods on its shipped MNIST models, with wall time
beside it (interleaved rounds, so the spread shows the machine's noise), and :func:`format_costs` prints the
table every guidance lesson shows.

**Attention** (lessons 08, 10):

For N = H * W image positions with C channels, batch B, and (cross-attention) L text tokens of width D:

| layer           | attention matrix (floats)  | multiply-adds x 2 = FLOPs                               |
| --------------- | -------------------------- | ------------------------------------------------------- |
| self-attention  | B N^2                      | 2 B [N C 3C (qkv) + 2 N^2 C (scores, mix) + N C^2 (out)] |
| cross-attention | B N L                      | 2 B [N C^2 (q) + L D 2C (kv) + 2 N L C + N C^2 (out)]    |
| FiLM / AdaGN    | none                       | 2 B E 2C (the linear map from the embedding of width E)  |

Self-attention grows with N^2 (the resolution to the fourth power); cross-attention only with N L; FiLM not
with the resolution at all (its per-pixel scale and shift are element-wise, not multiply-adds of a matmul).
:func:`measured_softmax_bytes` reads the bytes the softmax actually allocates from torch's profiler, and
:func:`measured_flops` counts matmul and convolution FLOPs with torch's per-op FLOP formulas (those FlopCounterMode uses).
:func:`attention_run` measures the peak memory and time of one attention call at a given resolution, written out
(:func:`naive_attention`, two N x N matrices live at once) or through torch's ``scaled_dot_product_attention``
(a flash-attention kernel that never materialises the matrix): lesson 10's answer to seed 001's question 2.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from . import zoo
from .guidance import batched_cfg, cfg, classifier_grad, clip_grad, conditional, grad_guidance, noisy_clip_grad
from .nets.unet import CrossAttention, SelfAttention
from .timing import _synchronize
from .types import NULL_CLASS
from .variants import cfg_variant

__all__ = ["StepCost", "step_cost", "guidance_costs", "format_costs", "GUIDANCE_METHODS", "AttentionCost",
           "attention_cost", "film_flops", "unet_attention_costs", "measured_softmax_bytes", "measured_flops",
           "ATTENTION_IMPLS", "naive_attention", "AttentionRun", "attention_run", "attention_kernel",
           "available_memory_bytes"]


@dataclass
class AttentionCost:
    kind: str  # "self" or "cross"
    resolution: int  # H (= W)
    positions: int  # N = H * W
    keys: int  # N for self-attention, L for cross-attention
    channels: int
    flops: int
    matrix_bytes: int  # the B x N x keys attention probabilities


def attention_cost(kind: str, *, resolution: int, channels: int, batch: int = 1, tokens: int | None = None,
                   context_dim: int | None = None, bytes_per_float: int = 4) -> AttentionCost:
    """FLOPs and attention-matrix bytes of one single-head attention layer (formulas in the module docstring)."""
    if kind not in ("self", "cross"):
        raise ValueError(f"kind must be 'self' or 'cross', got {kind!r}.")
    if kind == "cross" and not (tokens and context_dim):
        raise ValueError("cross-attention needs tokens (L) and context_dim (D).")
    n, c = resolution * resolution, channels
    if kind == "self":
        keys, macs = n, n * c * 3 * c + 2 * n * n * c + n * c * c
    else:
        keys, macs = tokens, n * c * c + tokens * context_dim * 2 * c + 2 * n * tokens * c + n * c * c
    return AttentionCost(kind, resolution, n, keys, c, 2 * batch * macs, batch * n * keys * bytes_per_float)


def film_flops(*, emb_dim: int, channels: int, batch: int = 1) -> int:
    """FLOPs of a FiLM/AdaGN modulation's linear map, 2 B E 2C: independent of the resolution (lesson 10)."""
    return 2 * batch * emb_dim * 2 * channels


def unet_attention_costs(model: nn.Module, x: torch.Tensor, t: torch.Tensor, cond=None) -> list[tuple[nn.Module, AttentionCost]]:
    """Run ``model(x, t, cond)`` once and compute the cost of every attention layer at the shape it really saw."""
    seen: list[tuple[nn.Module, AttentionCost]] = []

    def hook(module, args, _out):
        h = args[0]
        if isinstance(module, CrossAttention):
            cost = attention_cost("cross", resolution=h.shape[-1], channels=h.shape[1], batch=h.shape[0],
                                  tokens=args[1].shape[1], context_dim=args[1].shape[2])
        else:
            cost = attention_cost("self", resolution=h.shape[-1], channels=h.shape[1], batch=h.shape[0])
        seen.append((module, cost))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (SelfAttention, CrossAttention))]
    try:
        with torch.no_grad():
            model(x, t, cond)
    finally:
        for handle in handles:
            handle.remove()
    return seen


@contextmanager
def _quiet_native_stderr():
    """Silence what C++ writes to file descriptor 2 (the profiler's start/stop log lines) for a moment."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def measured_softmax_bytes(fn) -> int:
    """Bytes allocated by softmax ops while ``fn()`` runs, as torch's profiler records them (CPU or GPU)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with _quiet_native_stderr(), torch.no_grad(), profile(activities=activities, profile_memory=True) as prof:
        fn()
    return int(sum(max(e.self_cpu_memory_usage, 0) + max(getattr(e, "self_device_memory_usage", 0), 0)
                   for e in prof.key_averages() if "softmax" in e.key))


class _FlopCount(TorchDispatchMode):
    """Adds up the FLOPs of every op torch's flop counter knows (matmuls, convolutions, attention), forward and
    backward. Unlike FlopCounterMode it tracks no module hierarchy, whose hooks cannot run inside
    ``torch.autograd.grad`` on a leaf input (a guidance direction's gradient)."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.total += count(*args, **kwargs, out_val=out)
        return out


def measured_flops(fn, *, grad: bool = False) -> int:
    """Matmul and convolution FLOPs of ``fn()`` with torch's own per-op FLOP formulas (lesson 10), backward passes
    included; ``grad=True`` keeps autograd on, so a training step's backward pass is counted too (``bench train``);
    a gradient that ``fn`` takes itself (guidance) is counted either way."""
    with torch.set_grad_enabled(grad), _FlopCount() as counter:
        fn()
    return int(counter.total)


@dataclass
class StepCost:
    """What one call of an eps-function (one sampling step) costs per sample.

    ``forward`` and ``backward``: passes per sample through each named network (a batched pass over 2B rows for
    a batch of B counts 2); ``flops``: matmul and convolution FLOPs per sample, backward passes included;
    ``ms``: wall-clock milliseconds per sample and step, one value per timing round (empty when not timed).
    """

    method: str
    forward: dict[str, float]
    backward: dict[str, float]
    flops: float
    ms: list[float] = field(default_factory=list)

    @property
    def passes(self) -> str:
        """The passes in words, e.g. ``"U-Net 1 fwd; classifier 1 fwd + 1 bwd"``."""
        parts = []
        for name, n in self.forward.items():
            if n or self.backward.get(name):
                back = self.backward.get(name, 0)
                parts.append(f"{name} {n:g} fwd" + (f" + {back:g} bwd" if back else ""))
        return "; ".join(parts)


def step_cost(eps_fn: Callable, x: torch.Tensor, t: torch.Tensor, networks: dict[str, nn.Module], *,
              method: str = "") -> StepCost:
    """Call ``eps_fn(x, t)`` once, outside autograd as a sampler does, and count its passes and FLOPs per sample.

    ``networks`` names the modules to count (``{"U-Net": unet, "classifier": clf}``); each must be called through
    its ``forward``. A gradient that reaches a network's output during the call (``torch.autograd.grad`` inside a
    guidance direction) counts as one backward pass over the rows it covers.
    """
    if not networks:
        raise ValueError("name at least one network to count, e.g. networks={'U-Net': unet}.")
    for name, net in networks.items():
        if not isinstance(net, nn.Module):
            raise TypeError(f"networks[{name!r}] must be an nn.Module (the one whose forward runs), "
                            f"got {type(net).__name__}.")
    batch = x.shape[0]
    forward = {name: 0.0 for name in networks}
    backward = {name: 0.0 for name in networks}

    def hook_for(name):
        def hook(_module, args, out):
            rows = args[0].shape[0]
            forward[name] += rows / batch
            if isinstance(out, torch.Tensor) and out.requires_grad:
                out.register_hook(lambda g: backward.__setitem__(name, backward[name] + g.shape[0] / batch))
        return hook

    handles = [net.register_forward_hook(hook_for(name)) for name, net in networks.items()]
    try:
        flops = measured_flops(lambda: eps_fn(x, t))
    finally:
        for handle in handles:
            handle.remove()
    if not any(forward.values()):
        raise ValueError(f"none of the networks {sorted(networks)} ran during eps_fn(x, t): name the modules it "
                         "calls (for a CLIP, its image tower, e.g. clip.model.visual).")
    return StepCost(method, forward, backward, flops / batch)


#: the guidance methods :func:`guidance_costs` measures, and the lessons that teach them
GUIDANCE_METHODS = {
    "unguided": "02",
    "classifier guidance": "04",
    "CLIP guidance, noise-aware tower": "06",
    "CLIP guidance, clean tower on x0_hat": "06",
    "CFG, two passes": "07",
    "CFG, one batched pass": "07",
    "CFG, perpendicular part (APG)": "09",
}


def guidance_costs(*, batch: int = 16, rounds: int = 5, t: int = 500, device=None) -> list[StepCost]:
    """Passes, FLOPs and wall time per sample and step of every method in :data:`GUIDANCE_METHODS`, each on the
    shipped MNIST checkpoints it uses (mnist-uncond with mnist-noisy-classifier, mnist-clip-noisy or mnist-clip;
    mnist-cfg for CFG). Wall time: ``rounds`` rounds, each timing every method once in a rotated order, so a
    slow moment of a busy machine falls on all of them; ``rounds=0`` counts without timing."""
    if batch < 1 or rounds < 0:
        raise ValueError(f"batch must be >= 1 and rounds >= 0, got {batch} and {rounds}.")
    unet, cfg_net = zoo.load("mnist-uncond", device=device), zoo.load("mnist-cfg", device=device)
    classifier = zoo.load("mnist-noisy-classifier", device=device)
    clip, noisy_clip = zoo.load("mnist-clip", device=device), zoo.load("mnist-clip-noisy", device=device)
    schedule = zoo.schedule_for("mnist-uncond")
    dev = next(unet.parameters()).device
    x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0)).to(dev)
    tt = torch.full((batch,), t, device=dev)
    y = torch.arange(batch, device=dev) % 10
    with torch.no_grad():
        text = clip.encode_text("a seven")[0]

    def eps(x, t):
        return unet(x, t)

    methods = {
        "unguided": (eps, {"U-Net": unet}),
        "classifier guidance": (grad_guidance(eps, schedule, classifier_grad(classifier, y), 2.0),
                                {"U-Net": unet, "classifier": classifier}),
        "CLIP guidance, noise-aware tower": (grad_guidance(eps, schedule, noisy_clip_grad(noisy_clip, text), 100.0),
                                             {"U-Net": unet, "noise-aware CLIP": noisy_clip}),
        "CLIP guidance, clean tower on x0_hat": (
            grad_guidance(eps, schedule, clip_grad(clip.encode_image, text, eps_fn=eps, schedule=schedule), 100.0),
            {"U-Net": unet, "CLIP image tower": clip.model.visual}),
        "CFG, two passes": (cfg(conditional(cfg_net, y), conditional(cfg_net, NULL_CLASS), 3.0), {"U-Net": cfg_net}),
        "CFG, one batched pass": (batched_cfg(cfg_net, y, NULL_CLASS, 3.0), {"U-Net": cfg_net}),
        "CFG, perpendicular part (APG)": (cfg_variant(cfg_net, y, NULL_CLASS, 3.0, schedule=schedule, parallel=0.0),
                                          {"U-Net": cfg_net}),
    }
    costs = {name: step_cost(fn, x, tt, nets, method=name) for name, (fn, nets) in methods.items()}
    names = list(methods)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = methods[name][0]
            if r == 0:
                fn(x, tt)  # warm-up
            _synchronize()
            start = time.perf_counter()
            fn(x, tt)
            _synchronize()
            costs[name].ms.append(1000 * (time.perf_counter() - start) / batch)
    return list(costs.values())


def format_costs(costs: list[StepCost], *, highlight=(), base: str = "unguided") -> str:
    """The cost table: passes, MFLOP per sample and step and their ratio to ``base``, and wall time (median and
    range over the rounds) with its ratio, each round's ratio taken within the round. Rows in ``highlight``
    (method names) are marked with an arrow."""
    by_name = {c.method: c for c in costs}
    if base not in by_name:
        raise ValueError(f"base {base!r} is not among the measured methods {sorted(by_name)}.")
    unknown = set(highlight) - set(by_name)
    if unknown:
        raise ValueError(f"highlight names methods that were not measured: {sorted(unknown)}.")
    ref = by_name[base]
    name_w = max(len(c.method) for c in costs)
    passes_w = max(len(c.passes) for c in costs)
    lines = [f"{'':{name_w + 5}}{'passes per sample and step':{passes_w}}  {'MFLOP':>7} {'x ' + base:>11}"
             + (f"  ms per sample and step [range]  x {base} [range]" if ref.ms else "")]
    for c in costs:
        mark = "-> " if c.method in highlight else "   "
        line = f"{mark}{c.method:{name_w}}  {c.passes:{passes_w}}  {c.flops / 1e6:7.1f} {c.flops / ref.flops:11.2f}"
        if c.ms and ref.ms:
            ratios = [m / b for m, b in zip(c.ms, ref.ms)]
            line += (f"  {statistics.median(c.ms):6.2f} [{min(c.ms):.2f}, {max(c.ms):.2f}]"
                     f"{'':>9}{statistics.median(ratios):5.2f} [{min(ratios):.2f}, {max(ratios):.2f}]")
        lines.append(line)
    return "\n".join(lines)


# --- attention memory at growing resolution (lesson 10, section 2: seed 001's question 2) ---

ATTENTION_IMPLS = ("naive", "sdpa")


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V, written out: it materialises the scores and the probabilities, two B x N x N
    matrices, as the lecture's memory formula assumes (and as SDPA's math fallback does, which the course's
    ``SelfAttention`` gets on CPU for its transposed q, k, v: see :func:`attention_kernel`)."""
    return (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1) @ v


@dataclass
class AttentionRun:
    """One attention call: B x heads x N x C queries (N = resolution^2 positions) against ``keys`` keys."""

    impl: str  # "naive" or "sdpa" (torch.nn.functional.scaled_dot_product_attention)
    resolution: int
    positions: int  # N
    keys: int  # N for self-attention, L tokens for cross-attention
    peak_bytes: int  # memory allocated during the call beyond its inputs, at its highest
    matrix_bytes: int  # one B x heads x N x keys float matrix: what the lecture's formula counts
    ms: float
    kernel: str  # the aten op that did the work (which SDPA backend torch chose)


def _peak_cpu_bytes(prof) -> int:
    """The highest running total of the allocations and frees the profiler recorded, in time order."""
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def _attention_ops(prof) -> list[str]:
    """The attention ops the profiler saw, the dispatcher first and the kernel it chose last."""
    picked = [e.key for e in prof.key_averages() if "attention" in e.key]
    return sorted(picked, key=lambda k: (k != "aten::scaled_dot_product_attention", k))


def attention_kernel(fn) -> str:
    """Which kernel torch ran for the attention inside ``fn()``: e.g. ``aten::_scaled_dot_product_flash_attention_for_cpu``
    (tiled, no N x N matrix) or ``aten::_scaled_dot_product_attention_math`` (the written-out fallback)."""
    with _quiet_native_stderr(), torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ops = _attention_ops(prof)
    return ops[-1] if ops else "none"


def attention_run(impl: str, *, resolution: int, channels: int = 64, batch: int = 1, heads: int = 1,
                  keys: int | None = None, device=None, seed: int = 0) -> AttentionRun:
    """Peak extra memory and wall time of one attention call over a ``resolution`` x ``resolution`` image:
    self-attention (every position attends to every position), or cross-attention to ``keys`` tokens.

    Memory: on CPU from torch's profiler (every allocation and free in order); on CUDA from the allocator's peak.
    Time: the median of three calls after the measured one (one call when a call takes over a second)."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"impl must be one of {ATTENTION_IMPLS}, got {impl!r}.")
    device = torch.device(device or "cpu")
    n = resolution * resolution
    m = n if keys is None else keys
    if m < 1:
        raise ValueError(f"keys must be a positive token count (or None for self-attention), got {keys}.")
    gen = torch.Generator(device=device).manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, rows, channels, generator=gen, device=device) for rows in (n, m, m))
    fn = (lambda: naive_attention(q, k, v)) if impl == "naive" else (
        lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
    with torch.no_grad():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            start = time.perf_counter()
            fn()
            _synchronize()
            first = time.perf_counter() - start
        peak = (torch.cuda.max_memory_allocated(device) - before) if device.type == "cuda" else _peak_cpu_bytes(prof)
        kernel = "aten::softmax" if impl == "naive" else (_attention_ops(prof) or ["?"])[-1]
        times = []
        for _ in range(3 if first < 1.0 else 0):
            start = time.perf_counter()
            fn()
            _synchronize()
            times.append(time.perf_counter() - start)
    times = times or [first]
    return AttentionRun(impl, resolution, n, m, int(peak), batch * heads * n * m * 4,
                        1000 * statistics.median(times), kernel)


def available_memory_bytes() -> int | None:
    """Memory the system can still hand out (Linux's MemAvailable), or None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
