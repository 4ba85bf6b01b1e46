"""Benchmarks that print their numbers: ``python -m lessonlib.bench {sampling,quality,cfg,widgets,frontier,train}``.

``sampling``: DDPM vs DDIM speed and FID_judge (lesson 02); ``quality``: a diffusion checkpoint (shipped, or an
ablation's folder) against the data per CFG scale, with issue 17's targets; ``cfg``: the cost of batched classifier-free
guidance against the conditional pass alone (lesson 07); ``widgets``: uncached and cached slider-panel
renders (every guidance lesson); ``frontier``: every guidance method and variant on one adherence / FID_judge /
diversity frontier from the same noise (lesson 09); ``train``: training steps per second in fp32 and bf16 and the
loss each reaches after the same steps (issue 39, :func:`bench_train`).

Each benchmark prints its configuration, the machine, and ratios measured in the same run;
absolute seconds are context only.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from . import zoo
from .costs import measured_flops
from .data import load_dataset, load_mnist
from .devices import autocast, bf16_support, device
from .frontier import LESSON_09, LESSON_11, format_frontier, measure_frontier
from .guidance import batched_cfg, cfg, conditional
from .metrics import fid_floor, fid_judge, fid_judge_interval, judge_accuracy, judge_manifold_scores
from .recipes import RECIPES
from .samplers import sample_images
from .tasks import TASKS, Context, build_model
from .timing import per_call_ms
from .training import fit
from .types import NULL_CLASS
from .widgets import SliderPanel, scale_slider

__all__ = ["bench_sampling", "bench_quality", "bench_cfg", "bench_widgets", "bench_train", "matmul_peak", "step_speed",
           "equal_steps_loss", "main"]


def bench_sampling(*, n: int = 2000, n_ddpm: int = 500, ddim_steps=(10, 25, 50, 100), model: str = "mnist-uncond",
                   seed: int = 0) -> list[dict]:
    """Images/s and FID_judge of DDPM (all steps) and DDIM at several step counts, next to the real-vs-real floor.

    ``n_ddpm = 0`` skips DDPM (its T steps per image are most of this benchmark's time on a CPU).
    """
    if n < 1 or n_ddpm < 0:
        raise ValueError(f"n must be at least 1 and n_ddpm at least 0 (0 skips DDPM), got n={n}, n_ddpm={n_ddpm}.")
    counts = sorted({n, n_ddpm} - {0})
    unet, judge = zoo.load(model), zoo.load("mnist-judge")
    schedule = zoo.schedule_for(model)
    test = load_mnist("test")
    eps = lambda x, t: unet(x, t)  # noqa: E731
    print(f"benchmark: sampling | model {model} ({sum(p.numel() for p in unet.parameters()):,} parameters, {schedule}) | "
          f"N = {n} (DDPM: {n_ddpm}) | seed {seed}")
    print(f"machine: {zoo.machine_summary()} | reference: {test.source}")
    floors = {k: fid_floor(judge, test.images, k, seed=seed) for k in counts}
    ref = test.images[torch.randperm(len(test), generator=torch.Generator().manual_seed(seed + 1))]
    real_pr = {k: judge_manifold_scores(judge, ref[k:2 * k], ref[:k]) for k in counts}
    for k, pr in real_pr.items():
        print(f"  real vs real, N={k}: precision {pr.precision:.3f} recall {pr.recall:.3f} density {pr.density:.3f} "
              f"coverage {pr.coverage:.3f} (k = {pr.k}; what a perfect sampler would score)")
    rows = []
    for method, steps, count in [("ddpm", schedule.T, n_ddpm)] * (n_ddpm > 0) + [("ddim", s, n) for s in ddim_steps]:
        start = time.perf_counter()
        images = sample_images(eps, count, schedule, steps=steps, method=method, seed=seed)
        seconds = time.perf_counter() - start
        fid = fid_judge(judge, images, ref[:count])
        pr = judge_manifold_scores(judge, images, ref[:count])
        rows.append({"sampler": f"{method}-{steps}", "n": count, "images_per_s": count / seconds, "fid": fid,
                     "floor": floors[count], "ratio": fid / floors[count], "seconds": seconds,
                     "precision": pr.precision, "recall": pr.recall, "density": pr.density, "coverage": pr.coverage})
        r = rows[-1]
        print(f"  {r['sampler']:>10} N={count:<5} {r['images_per_s']:8.2f} img/s   FID_judge {fid:8.3f}   "
              f"floor {r['floor']:.3f}   ratio {r['ratio']:6.2f}x   {pr}   ({seconds:.0f} s)", flush=True)
    fastest = max(rows, key=lambda r: r["images_per_s"])
    print(f"speed ratios vs {fastest['sampler']}: "
          + ", ".join(f"{r['sampler']} {r['images_per_s'] / fastest['images_per_s']:.3f}" for r in rows))
    return rows


def bench_quality(*, model: str = "mnist-cfg", directory: str | Path | None = None, n: int = 1000, steps: int = 25,
                  scales=(1.0, 1.5, 2.0, 3.0, 5.0), seed: int = 0) -> list[dict]:
    """How close a diffusion checkpoint's samples come to the data (issue 17's targets), per guidance scale.

    Class-conditional: adherence, FID_judge [95% interval] against class-matched real test images, the
    real-vs-real floor at the same N and the ratio, precision and recall, at each CFG scale (DDIM, or Euler for a
    velocity model). Unconditional: the same at s = 1 only. ``directory`` reads an ablation's checkpoint folder.
    """
    directory = None if directory is None else Path(directory)
    net, entry = zoo.load(model, directory=directory).eval(), zoo.entry(model, directory=directory)
    schedule, c = zoo.schedule_for(model, directory=directory), net.config
    dataset = entry["recipe"].get("dataset", "mnist")
    judge, test = zoo.load(f"{dataset}-judge"), load_dataset(dataset, "test")
    method = "euler" if c.prediction == "velocity" else "ddim"
    conditional_model = bool(c.num_classes)
    y = torch.arange(n) % c.num_classes if conditional_model else None
    if conditional_model:
        ref = test.matched(y, seed=seed)
        floor = fid_floor(judge, test.images, labels=test.labels, matched_to=y, seed=seed)
    else:
        order = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))
        ref, floor = test.images[order[:n]], fid_floor(judge, test.images, n, seed=seed)
    noise = torch.randn(n, c.in_channels, c.image_size, c.image_size, generator=torch.Generator().manual_seed(seed))
    print(f"benchmark: quality | model {model} ({entry['steps_done']} steps, {entry['wall_time_s'] / 60:.0f} min"
          f"{', ' + str(directory) if directory else ''}) | N = {n}, {method}-{steps} | reference: "
          f"{'class-matched ' if conditional_model else ''}{test.source} | floor (real vs real) {floor:.3f}")
    print(f"machine: {zoo.machine_summary()}")
    rows = []
    for s in (scales if conditional_model else [1.0]):
        fn = batched_cfg(net, y, NULL_CLASS, s) if conditional_model else (lambda x, t: net(x, t))
        xs = sample_images(fn, noise, schedule, steps=steps, method=method)
        ci, pr = fid_judge_interval(judge, xs, ref), judge_manifold_scores(judge, xs, ref)
        rows.append({"scale": s, "adherence": judge_accuracy(judge, xs, y) if conditional_model else None,
                     "fid": ci.fid, "fid_interval": ci, "floor": floor, "ratio": ci.fid / floor,
                     "precision": pr.precision, "recall": pr.recall})
        r = rows[-1]
        adherence = f"adherence {r['adherence']:.3f}  " if conditional_model else ""
        print(f"  s = {s:<4g} {adherence}FID_judge {ci:.3f} = {r['ratio']:.1f}x the floor   precision "
              f"{pr.precision:.3f} recall {pr.recall:.3f}", flush=True)
    if conditional_model:
        first = next((r for r in rows if r["scale"] == 1.0), None)  # the targets are stated at s = 1
        best = min((r for r in rows if r["adherence"] >= 0.995), key=lambda r: r["fid"], default=None)
        at_1 = ("s = 1 was not measured (add it to --scales)" if first is None else
                f"at s = 1 adherence >= 0.97 ({'met' if first['adherence'] >= 0.97 else 'not met'}) and FID_judge "
                f"<= 2x the floor ({'met' if first['ratio'] <= 2 else 'not met'})")
        print(f"issue 17's targets: {at_1}; at the best scale adherence >= 0.995 with FID_judge "
              f"<= 2x the floor: " + ("no scale reaches adherence 0.995" if best is None else
                                      f"s = {best['scale']:g}, {best['ratio']:.1f}x "
                                      f"({'met' if best['ratio'] <= 2 else 'not met'})"))
    return rows


def bench_cfg(*, batches=(1, 8, 64, 256), model: str = "mnist-cfg", t: int = 500, min_seconds: float = 1.0) -> list[dict]:
    """Per-image cost of batched CFG and of two separate passes, relative to the conditional pass alone."""
    net = zoo.load(model)
    c = net.config
    print(f"benchmark: cfg | model {model} | t = {t} | machine: {zoo.machine_summary()}")
    rows = []
    with torch.no_grad():
        for b in batches:
            x = torch.randn(b, c.in_channels, c.image_size, c.image_size, generator=torch.Generator().manual_seed(0))
            tt, y = torch.full((b,), t), torch.arange(b) % c.num_classes
            fns = {"conditional": conditional(net, y), "batched_cfg": batched_cfg(net, y, NULL_CLASS, 3.0),
                   "two_passes": cfg(conditional(net, y), conditional(net, NULL_CLASS), 3.0)}
            ms = {k: per_call_ms(lambda f=f: f(x, tt), per=b, min_seconds=min_seconds) for k, f in fns.items()}
            rows.append({"batch": b, **ms, "ratio_batched": ms["batched_cfg"] / ms["conditional"],
                         "ratio_two_passes": ms["two_passes"] / ms["conditional"]})
            r = rows[-1]
            print(f"  batch {b:4d}: conditional {r['conditional']:7.3f} ms/img | batched CFG {r['batched_cfg']:7.3f} "
                  f"({r['ratio_batched']:.2f}x) | two passes {r['two_passes']:7.3f} ({r['ratio_two_passes']:.2f}x)",
                  flush=True)
    return rows


def bench_widgets(*, n_images: int = 16, steps: int = 25, settings: int = 4) -> dict:
    """Uncached and cached render times of a CFG slider panel (16 images, DDIM-25 by default)."""
    net, schedule = zoo.load("mnist-cfg"), zoo.schedule_for("mnist-cfg")
    x_T = torch.randn(n_images, 1, 28, 28, generator=torch.Generator().manual_seed(0))

    def render(scale: float) -> torch.Tensor:
        return sample_images(batched_cfg(net, 3, NULL_CLASS, scale), x_T, schedule, steps=steps)

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
           "uncached_max_s": max(uncached), "cached_max_s": max(cached), "renders": len(uncached),
           "cache_hits": len(cached)}
    print(f"  uncached render: median {out['uncached_s']:.2f} s, max {out['uncached_max_s']:.2f} s (target <= 5 s)")
    print(f"  cached render:   median {1000 * out['cached_s']:.1f} ms, max {1000 * out['cached_max_s']:.1f} ms "
          f"(target <= 200 ms)")
    return out


# ---- train: training speed per precision, and what the speed costs in loss (issue 39) ----------------------
#
# For each recipe: milliseconds per AdamW step at the recipe's batch size in fp32, bf16 (autocast, float32 weights)
# and bf16 with ``channels_last`` (``--compile`` adds bf16 under ``torch.compile``); samples per second; the FLOPs of a
# step (forward and backward, with the FLOP formulas of FlopCounterMode) per second, as a share of this machine's measured
# matmul peak in that precision; and the loss each precision reaches after the same number of steps from the same
# seed, batches and noise, so that speed is not bought with a worse model.

MODES = ("fp32", "bf16", "bf16+channels_last", "bf16+compile")
DEFAULT_RECIPES = ("mnist-uncond-quick", "mnist-uncond", "mnist-cfg", "cifar10-cfg", "cifar10-judge")
_DATA: dict[str, object] = {}


def matmul_peak(precision: str, *, n: int = 2048, seconds: float = 1.0) -> float:
    """GFLOP/s of an n x n matmul in fp32 or bf16 on :func:`lessonlib.devices.device`: the machine's practical peak."""
    dev = device()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    a, b = (torch.randn(n, n, device=dev, dtype=dtype) for _ in range(2))
    torch.mm(a, b)
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        torch.mm(a, b)
        calls += 1
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * calls / (time.perf_counter() - start) / 1e9


def _problem(name: str, mode: str):
    """A fresh model, loss and AdamW for recipe ``name`` set up for ``mode`` (one of MODES), from the recipe's seed."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; available: {', '.join(sorted(RECIPES))}.")
    recipe = copy.deepcopy(RECIPES[name])
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    ctx = Context(recipe, recipe.noise_schedule(), progress=False)
    if recipe.dataset not in _DATA:
        _DATA[recipe.dataset] = load_dataset(recipe.dataset, "train")
    model = build_model(ctx).to(device())
    if "channels_last" in mode:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = TASKS[recipe.task].loss(ctx, model, _DATA[recipe.dataset], gen)
    runner = torch.compile(model) if "compile" in mode else model
    return recipe, model, runner, loss_fn


def _stepper(name: str, mode: str):
    recipe, model, runner, loss_fn = _problem(name, mode)
    precision = "bf16" if mode.startswith("bf16") else "fp32"
    dev = device()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr)
    count = {"step": 0}

    def step() -> None:
        with autocast(precision, dev):
            loss = loss_fn(runner, count["step"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        count["step"] += 1

    def flops() -> int:
        with autocast(precision, dev):
            return measured_flops(lambda: loss_fn(model, 0).backward(), grad=True)
    return recipe, precision, step, flops


def step_speed(name: str, modes=MODES[:3], *, steps: int = 20, rounds: int = 3, warmup: int = 3) -> list[dict]:
    """Seconds per training step of recipe ``name`` in each of ``modes``: ``rounds`` rounds of ``steps`` steps,
    the modes taking turns (so a slow minute of the machine hits them alike), the best round of each reported;
    after ``warmup`` steps each (compilation happens there). Also the FLOPs of one step."""
    if steps < 1 or rounds < 1:
        raise ValueError(f"steps and rounds must be >= 1, got {steps} and {rounds}.")
    setups, out = {}, {}
    for mode in modes:
        recipe, precision, step, flops = _stepper(name, mode)
        start = time.perf_counter()
        for _ in range(warmup):
            step()
        setups[mode] = (step, time.perf_counter() - start)
        out[mode] = {"recipe": name, "mode": mode, "batch": recipe.batch_size, "precision": precision,
                     "warmup_s": setups[mode][1], "flops_per_step": flops(), "rounds_s": []}
    for _ in range(rounds):
        for mode in modes:
            step = setups[mode][0]
            start = time.perf_counter()
            for _ in range(steps):
                step()
            if device().type == "cuda":
                torch.cuda.synchronize()
            out[mode]["rounds_s"].append((time.perf_counter() - start) / steps)
    for row in out.values():
        row["s_per_step"] = min(row["rounds_s"])
    return list(out.values())


def equal_steps_loss(name: str, precision: str, *, steps: int = 200) -> list[float]:
    """The training losses of ``steps`` steps of recipe ``name`` in ``precision``, from the recipe's seed, with the
    recipe's learning rate (warm-up shortened to a fifth of the run) and the same batches and noise in each precision."""
    recipe, model, _, loss_fn = _problem(name, precision)
    out = fit(model, loss_fn, steps=steps, lr=recipe.lr, weight_decay=recipe.weight_decay,
              warmup=min(recipe.warmup, steps // 5), progress=False, precision=precision)
    return out.losses


def bench_train(*, recipes=DEFAULT_RECIPES, modes=MODES[:3], steps: int = 15, loss_steps: int = 200) -> list[dict]:
    """Print the speed table and the equal-steps loss table; returns the speed rows."""
    dev = device()
    ok, why = bf16_support(dev)
    print(f"benchmark: train | best of 3 rounds of {steps} steps per mode (the modes take turns), after 3 warm-up "
          f"steps, the recipe's batch size | machine: "
          f"{zoo.machine_summary()} | bf16: {'native' if ok else 'not native'} ({why})", flush=True)
    peak = {p: matmul_peak(p) for p in ("fp32", "bf16")}
    print(f"matmul peak (2048 x 2048): fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s "
          f"({peak['bf16'] / peak['fp32']:.2f}x)", flush=True)
    print(f"{'recipe':<20} {'batch':>5} {'mode':<20} {'ms/step':>8} {'steps/s':>8} {'samples/s':>9} {'vs fp32':>7} "
          f"{'GFLOP/s':>8} {'% peak':>6}", flush=True)
    rows = []
    for name in recipes:
        results = step_speed(name, modes, steps=steps)
        base = results[0]["s_per_step"]
        for r in results:
            gflops = r["flops_per_step"] / r["s_per_step"] / 1e9
            r.update(speedup=base / r["s_per_step"], gflops=gflops, peak_share=gflops / peak[r["precision"]])
            rows.append(r)
            print(f"{name:<20} {r['batch']:>5} {r['mode']:<20} {1000 * r['s_per_step']:8.1f} "
                  f"{1 / r['s_per_step']:8.2f} {r['batch'] / r['s_per_step']:9.0f} {r['speedup']:6.2f}x {gflops:8.1f} "
                  f"{100 * r['peak_share']:5.1f}%" + (f"  (compile {r['warmup_s']:.0f} s)" if "compile" in r["mode"]
                                                     else ""), flush=True)
    if loss_steps:
        print(f"\nloss after the same {loss_steps} steps, same seed, batches and noise (mean of the last 50 steps):")
        print(f"{'recipe':<20} {'fp32':>9} {'bf16':>9} {'bf16 - fp32':>12} {'relative':>9}")
        for name in recipes:
            mean = {p: sum(v[-50:]) / len(v[-50:]) for p in ("fp32", "bf16")
                    for v in [equal_steps_loss(name, p, steps=loss_steps)]}
            diff = mean["bf16"] - mean["fp32"]
            print(f"{name:<20} {mean['fp32']:9.4f} {mean['bf16']:9.4f} {diff:+12.4f} {diff / mean['fp32']:+8.1%}",
                  flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lessonlib.bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="bench", required=True)
    s = sub.add_parser("sampling", help="DDPM vs DDIM: images per second and FID_judge against the floor")
    s.add_argument("--n", type=int, default=2000, help="samples per DDIM setting (default 2000)")
    s.add_argument("--n-ddpm", type=int, default=500, help="samples for DDPM with all T steps (default 500; 0 skips DDPM)")
    s.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50, 100], help="DDIM step counts")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--model", default="mnist-uncond", help="an unconditional zoo name (default mnist-uncond; "
                   "mnist-uncond-quick: the 15-minute CPU budget)")
    c = sub.add_parser("cfg", help="batched CFG vs the conditional pass alone, per image, over batch sizes")
    c.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64, 256])
    w = sub.add_parser("widgets", help="uncached and cached render time of a CFG slider panel")
    w.add_argument("--images", type=int, default=16)
    w.add_argument("--steps", type=int, default=25)
    q = sub.add_parser("quality", help="a diffusion checkpoint against the data: FID_judge / floor, adherence, "
                                       "precision and recall per CFG scale")
    q.add_argument("--model", default="mnist-cfg", help="a zoo name (default mnist-cfg)")
    q.add_argument("--dir", help="a checkpoint folder of your own (e.g. python -m lessonlib.train ... --out DIR)")
    q.add_argument("--n", type=int, default=1000, help="samples per scale (default 1000)")
    q.add_argument("--steps", type=int, default=25, help="sampling steps (default 25)")
    q.add_argument("--scales", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0, 5.0])
    f = sub.add_parser("frontier", help="every guidance method on one adherence / FID_judge / diversity frontier")
    f.add_argument("--n", type=int, default=200, help="samples per (method, scale), 20 per class (default 200)")
    f.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    f.add_argument("--methods", nargs="+", help="a subset of the methods, or 'lesson-09' (the default), "
                                                 "'lesson-11' or 'all'")
    tr = sub.add_parser("train", help="training speed in fp32, bf16 and bf16 + channels_last, and equal-steps loss")
    tr.add_argument("--recipes", nargs="+", default=list(DEFAULT_RECIPES))
    tr.add_argument("--steps", type=int, default=15, help="timed steps per mode and round (default 15)")
    tr.add_argument("--loss-steps", type=int, default=200, help="steps behind the equal-steps loss (0 skips it)")
    tr.add_argument("--compile", action="store_true", help="also time bf16 under torch.compile (slow to compile)")
    args = parser.parse_args(argv)
    if args.bench == "train":
        bench_train(recipes=args.recipes, modes=MODES if args.compile else MODES[:3], steps=args.steps,
                    loss_steps=args.loss_steps)
    elif args.bench == "sampling":
        bench_sampling(n=args.n, n_ddpm=args.n_ddpm, ddim_steps=args.steps, seed=args.seed, model=args.model)
    elif args.bench == "cfg":
        bench_cfg(batches=args.batches)
    elif args.bench == "quality":
        bench_quality(model=args.model, directory=args.dir, n=args.n, steps=args.steps, scales=args.scales)
    elif args.bench == "frontier":
        print(f"benchmark: frontier | N = {args.n} per point (10 classes), DDIM-{args.steps}, same noise for every point "
              f"| machine: {zoo.machine_summary()}", flush=True)
        groups = {"lesson-09": LESSON_09, "lesson-11": LESSON_11, "all": list(dict.fromkeys(LESSON_09 + LESSON_11))}
        methods = [m for name in (args.methods or ["lesson-09"]) for m in groups.get(name, [name])]
        rows, floor = measure_frontier(n=args.n, steps=args.steps, methods=methods)
        print(format_frontier(rows, floor))
    else:
        bench_widgets(n_images=args.images, steps=args.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
