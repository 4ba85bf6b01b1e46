"""Benchmarks that print their numbers: ``python -m lessonlib.bench {sampling,cfg,widgets,frontier}``.

``sampling``: DDPM vs DDIM speed and FID_judge (lesson 02); ``cfg``: the cost of batched classifier-free
guidance against the conditional pass alone (lesson 07); ``widgets``: uncached and cached slider-panel
renders (every guidance lesson); ``frontier``: every guidance method and variant on one adherence / FID_judge /
diversity frontier from the same noise (lesson 09).

Each benchmark prints its configuration, the machine, and ratios measured in the same run;
absolute seconds are context only.
"""
from __future__ import annotations

import argparse
import time

import torch

from . import zoo
from .data import load_mnist
from .metrics import fid_floor, fid_judge
from .samplers import sample
from .schedules import make_schedule

__all__ = ["generate", "bench_sampling", "bench_cfg", "bench_widgets", "per_call_seconds", "main"]


def generate(eps_fn, n: int, schedule, *, steps: int, method: str = "ddim", batch: int = 250, seed: int = 0,
             shape=(1, 28, 28), clip_x0: bool = True, progress: bool = False) -> tuple[torch.Tensor, float]:
    """n images in batches from seeded noise, x0_hat clipped to [-1, 1]; returns (images, seconds)."""
    gen = torch.Generator().manual_seed(seed)
    start, out = time.perf_counter(), []
    for i in range(0, n, batch):
        x_T = torch.randn(min(batch, n - i), *shape, generator=gen)
        out.append(sample(eps_fn, x_T, schedule, steps=steps, method=method, generator=gen, clip_x0=clip_x0,
                          progress=progress))
    return torch.cat(out).clamp(-1, 1), time.perf_counter() - start


def bench_sampling(*, n: int = 2000, n_ddpm: int = 500, ddim_steps=(10, 25, 50, 100), model: str = "mnist-uncond",
                   seed: int = 0) -> list[dict]:
    """Images/s and FID_judge of DDPM (all steps) and DDIM at several step counts, next to the real-vs-real floor."""
    unet, judge = zoo.load(model), zoo.load("mnist-judge")
    entry = zoo.manifest()[model]
    schedule = make_schedule(entry["recipe"]["schedule"], entry["recipe"]["T"])
    test = load_mnist("test")
    eps = lambda x, t: unet(x, t)  # noqa: E731
    print(f"benchmark: sampling | model {model} ({entry['parameters']:,} parameters, {schedule}) | "
          f"N = {n} (DDPM: {n_ddpm}) | seed {seed}")
    print(f"machine: {zoo.machine_summary()} | reference: {test.source}")
    floors = {k: fid_floor(judge, test.images, k, seed=seed) for k in sorted({n, n_ddpm})}
    ref = test.images[torch.randperm(len(test), generator=torch.Generator().manual_seed(seed + 1))]
    rows = []
    for method, steps, count in [("ddpm", schedule.T, n_ddpm)] + [("ddim", s, n) for s in ddim_steps]:
        images, seconds = generate(eps, count, schedule, steps=steps, method=method, seed=seed)
        fid = fid_judge(judge, images, ref[:count])
        rows.append({"sampler": f"{method}-{steps}", "n": count, "images_per_s": count / seconds, "fid": fid,
                     "floor": floors[count], "ratio": fid / floors[count], "seconds": seconds})
        r = rows[-1]
        print(f"  {r['sampler']:>10} N={count:<5} {r['images_per_s']:8.2f} img/s   FID_judge {fid:8.3f}   "
              f"floor {r['floor']:.3f}   ratio {r['ratio']:6.2f}x   ({seconds:.0f} s)", flush=True)
    fastest = max(rows, key=lambda r: r["images_per_s"])
    print(f"speed ratios vs {fastest['sampler']}: "
          + ", ".join(f"{r['sampler']} {r['images_per_s'] / fastest['images_per_s']:.3f}" for r in rows))
    return rows


def per_call_seconds(fn, *, min_seconds: float = 1.0, min_calls: int = 3) -> float:
    """Seconds per call of fn(): one warm-up call, then repeat until ``min_seconds`` and ``min_calls`` are reached."""
    fn()
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < min_seconds:
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls


def bench_cfg(*, batches=(1, 8, 64, 256), model: str = "mnist-cfg", t: int = 500, min_seconds: float = 1.0) -> list[dict]:
    """Per-image cost of batched CFG and of two separate passes, relative to the conditional pass alone."""
    from .guidance import batched_cfg, cfg, conditional

    net = zoo.load(model)
    c = net.config
    print(f"benchmark: cfg | model {model} | t = {t} | machine: {zoo.machine_summary()}")
    rows = []
    with torch.no_grad():
        for b in batches:
            x = torch.randn(b, c.in_channels, c.image_size, c.image_size, generator=torch.Generator().manual_seed(0))
            tt, y = torch.full((b,), t), torch.arange(b) % c.num_classes
            fns = {"conditional": conditional(net, y), "batched_cfg": batched_cfg(net, y, -1, 3.0),
                   "two_passes": cfg(conditional(net, y), conditional(net, -1), 3.0)}
            ms = {k: 1000 * per_call_seconds(lambda f=f: f(x, tt), min_seconds=min_seconds) / b for k, f in fns.items()}
            rows.append({"batch": b, **ms, "ratio_batched": ms["batched_cfg"] / ms["conditional"],
                         "ratio_two_passes": ms["two_passes"] / ms["conditional"]})
            r = rows[-1]
            print(f"  batch {b:4d}: conditional {r['conditional']:7.3f} ms/img | batched CFG {r['batched_cfg']:7.3f} "
                  f"({r['ratio_batched']:.2f}x) | two passes {r['two_passes']:7.3f} ({r['ratio_two_passes']:.2f}x)",
                  flush=True)
    return rows


def bench_widgets(*, n_images: int = 16, steps: int = 25, settings: int = 4) -> dict:
    """Uncached and cached render times of a CFG slider panel (16 images, DDIM-25 by default)."""
    from .guidance import batched_cfg
    from .widgets import SliderPanel, scale_slider

    net = zoo.load("mnist-cfg")
    schedule = make_schedule("linear", zoo.manifest()["mnist-cfg"]["recipe"]["T"])
    x_T = torch.randn(n_images, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    render = lambda scale: sample(batched_cfg(net, 3, -1, scale), x_T, schedule, steps=steps, clip_x0=True,  # noqa: E731
                                  progress=False)
    panel = SliderPanel(render, {"scale": scale_slider(0.0, min=0, max=10, step=0.5)}, title="bench")
    print(f"benchmark: widgets | CFG panel, {n_images} images, DDIM-{steps} | machine: {zoo.machine_summary()}")
    uncached, cached = [], []
    for i in range(1, settings + 1):
        panel.set(scale=float(i))
        uncached.append(panel.last["seconds"])
        if panel.last.get("cached") or panel.last.get("error"):
            raise RuntimeError(f"the panel did not render scale {i}: {panel.last}")
    for i in range(1, settings + 1):
        panel.set(scale=float(i))
        cached.append(panel.last["seconds"])
        if not panel.last.get("cached"):
            raise RuntimeError(f"scale {i} was rendered again instead of coming from the cache")
    out = {"uncached_s": sorted(uncached)[len(uncached) // 2], "cached_s": sorted(cached)[len(cached) // 2],
           "uncached_max_s": max(uncached), "cached_max_s": max(cached)}
    print(f"  uncached render: median {out['uncached_s']:.2f} s, max {out['uncached_max_s']:.2f} s (target <= 5 s)")
    print(f"  cached render:   median {1000 * out['cached_s']:.1f} ms, max {1000 * out['cached_max_s']:.1f} ms "
          f"(target <= 200 ms)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lessonlib.bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="bench", required=True)
    s = sub.add_parser("sampling", help="DDPM vs DDIM: images per second and FID_judge against the floor")
    s.add_argument("--n", type=int, default=2000, help="samples per DDIM setting (default 2000)")
    s.add_argument("--n-ddpm", type=int, default=500, help="samples for DDPM with all T steps (default 500)")
    s.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50, 100], help="DDIM step counts")
    s.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("cfg", help="batched CFG vs the conditional pass alone, per image, over batch sizes")
    c.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64, 256])
    w = sub.add_parser("widgets", help="uncached and cached render time of a CFG slider panel")
    w.add_argument("--images", type=int, default=16)
    w.add_argument("--steps", type=int, default=25)
    f = sub.add_parser("frontier", help="every guidance method on one adherence / FID_judge / diversity frontier")
    f.add_argument("--n", type=int, default=200, help="samples per (method, scale), 20 per class (default 200)")
    f.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    f.add_argument("--methods", nargs="+", help="a subset of the methods (default: all)")
    args = parser.parse_args(argv)
    if args.bench == "sampling":
        bench_sampling(n=args.n, n_ddpm=args.n_ddpm, ddim_steps=args.steps, seed=args.seed)
    elif args.bench == "cfg":
        bench_cfg(batches=args.batches)
    elif args.bench == "frontier":
        from .frontier import format_frontier, measure_frontier

        print(f"benchmark: frontier | N = {args.n} per point (10 classes), DDIM-{args.steps}, same noise for every point "
              f"| machine: {zoo.machine_summary()}", flush=True)
        rows, floor = measure_frontier(n=args.n, steps=args.steps, methods=args.methods)
        print(format_frontier(rows, floor))
    else:
        bench_widgets(n_images=args.images, steps=args.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
