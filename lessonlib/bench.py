"""Benchmarks that print their numbers: ``python -m lessonlib.bench sampling`` (lesson 02).

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

__all__ = ["generate", "bench_sampling", "main"]


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lessonlib.bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="bench", required=True)
    s = sub.add_parser("sampling", help="DDPM vs DDIM: images per second and FID_judge against the floor")
    s.add_argument("--n", type=int, default=2000, help="samples per DDIM setting (default 2000)")
    s.add_argument("--n-ddpm", type=int, default=500, help="samples for DDPM with all T steps (default 500)")
    s.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50, 100], help="DDIM step counts")
    s.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.bench == "sampling":
        bench_sampling(n=args.n, n_ddpm=args.n_ddpm, ddim_steps=args.steps, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
